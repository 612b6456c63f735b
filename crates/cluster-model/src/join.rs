//! Join tokens and certificate revocation in the replicated state (issue 12, item 3).
//!
//! ```text
//!   TokenCreate(hash, expires)  ──> tokens[hash] = Open          (the secret itself is never stored)
//!   TokenRedeem(hash, node, fp) ──> Open, not expired, name free ──> Used; certificates[node] += fp
//!   TokenRevoke(hash)           ──> Open ──> Revoked
//!   NodeRevoke(node)            ──> revoked += certificates[node]; removed += node   (`node remove`)
//!   NodeAdmit(node)             ──> removed -= node                                  (`node add` again)
//! ```
//!
//! Used and revoked tokens stay as tombstones until a day after their expiry, so that a second
//! redemption is refused as "used" rather than "unknown". Every refusal changes nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// How long a used, revoked or expired token is remembered after its expiry.
pub const TOKEN_TOMBSTONE_MS: u64 = 24 * 3600 * 1000;

/// One join token, named by the SHA-256 of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    pub created_ms: u64,
    pub expires_ms: u64,
    pub status: TokenStatus,
}

/// Where a token stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenStatus {
    Open,
    Used { node: String, at_ms: u64 },
    Revoked { at_ms: u64 },
}

/// Join tokens, certificates the cluster issued, and what it refuses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinState {
    /// SHA-256 of a token's secret (lowercase hex) → the token.
    pub tokens: BTreeMap<String, JoinToken>,
    /// Node → fingerprints (SHA-256 of the DER) of the certificates issued to it by redemption.
    pub certificates: BTreeMap<String, BTreeSet<String>>,
    /// Fingerprints of certificates refused by every listener.
    pub revoked: BTreeSet<String>,
    /// Names of removed nodes: a certificate with such a common name is refused (certificates
    /// issued by hand, whose fingerprint the cluster never saw).
    pub removed: BTreeSet<String>,
}

impl JoinState {
    /// Why token `hash` cannot be redeemed for `node` at `now_ms`, if it cannot; `known`: the
    /// state knows `node` otherwise (it announced itself).
    pub fn redeem_refusal(&self, hash: &str, node: &str, known: bool, now_ms: u64) -> Option<String> {
        let Some(token) = self.tokens.get(hash) else {
            return Some(
                "join token not known to this cluster: mistyped, forged, created by another cluster, or expired more \
                 than a day ago"
                    .to_owned(),
            );
        };
        match &token.status {
            TokenStatus::Used { node: by, .. } => {
                return Some(format!("join token already used (by node `{by}`): a token admits one node only"))
            }
            TokenStatus::Revoked { .. } => return Some("join token was revoked".to_owned()),
            TokenStatus::Open => {}
        }
        if now_ms >= token.expires_ms {
            return Some(format!(
                "join token expired {} s ago: create a new one (`clusterctl cluster token`)",
                (now_ms - token.expires_ms) / 1000
            ));
        }
        if (known || self.certificates.contains_key(node)) && !self.removed.contains(node) {
            return Some(format!("node name `{node}` is already in the cluster: choose another name"));
        }
        None
    }

    /// Records a new token; prunes tombstones a day past their expiry.
    pub(crate) fn create(&mut self, hash: &str, created_ms: u64, expires_ms: u64) -> Result<(), String> {
        if expires_ms <= created_ms {
            return Err(format!("a join token must expire after its creation ({expires_ms} <= {created_ms})"));
        }
        if self.tokens.contains_key(hash) {
            return Err("a join token with this secret exists already".to_owned());
        }
        self.tokens.retain(|_, token| token.expires_ms.saturating_add(TOKEN_TOMBSTONE_MS) > created_ms);
        self.tokens.insert(hash.to_owned(), JoinToken { created_ms, expires_ms, status: TokenStatus::Open });
        Ok(())
    }

    pub(crate) fn revoke(&mut self, hash: &str, at_ms: u64) -> Result<(), String> {
        match self.tokens.get_mut(hash) {
            None => Err("join token not known to this cluster".to_owned()),
            Some(JoinToken { status: TokenStatus::Used { node, .. }, .. }) => {
                Err(format!("join token already used (by node `{node}`): remove the node instead"))
            }
            Some(JoinToken { status: TokenStatus::Revoked { .. }, .. }) => Err("join token already revoked".to_owned()),
            Some(token) => {
                token.status = TokenStatus::Revoked { at_ms };
                Ok(())
            }
        }
    }

    pub(crate) fn redeem(
        &mut self,
        hash: &str,
        node: &str,
        known: bool,
        fingerprint: &str,
        at_ms: u64,
    ) -> Result<(), String> {
        if let Some(refusal) = self.redeem_refusal(hash, node, known, at_ms) {
            return Err(refusal);
        }
        let token = self.tokens.get_mut(hash).expect("checked by redeem_refusal");
        token.status = TokenStatus::Used { node: node.to_owned(), at_ms };
        self.removed.remove(node);
        self.certificates.entry(node.to_owned()).or_default().insert(fingerprint.to_owned());
        Ok(())
    }

    /// `node remove`: every certificate issued to `node`, and its name, are refused from now on.
    pub(crate) fn revoke_node(&mut self, node: &str) {
        if let Some(issued) = self.certificates.remove(node) {
            self.revoked.extend(issued);
        }
        self.removed.insert(node.to_owned());
    }

    /// Member `node` got a renewed certificate.
    pub(crate) fn renewed(&mut self, node: &str, fingerprint: &str) -> Result<(), String> {
        if self.removed.contains(node) {
            return Err(format!("node `{node}` was removed from the cluster: its certificate is not renewed"));
        }
        self.certificates.entry(node.to_owned()).or_default().insert(fingerprint.to_owned());
        Ok(())
    }

    /// `node add` of a name removed before: certificates with that name are accepted again (those
    /// revoked by fingerprint stay refused).
    pub(crate) fn admit_node(&mut self, node: &str) -> bool {
        self.removed.remove(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_admits_one_node_once_before_it_expires() {
        let mut join = JoinState::default();
        join.create("h1", 1_000, 61_000).unwrap();
        assert!(join.redeem_refusal("nope", "n4", false, 2_000).unwrap().starts_with("join token not known"));
        assert!(join.redeem_refusal("h1", "n4", false, 61_000).unwrap().starts_with("join token expired 0 s ago"));
        let before = join.clone();
        assert!(join.redeem("h1", "n4", false, "61", 61_000).is_err());
        assert_eq!(join, before, "a refusal changes nothing");
        join.redeem("h1", "n4", false, "fp4", 2_000).unwrap();
        assert_eq!(join.certificates["n4"], BTreeSet::from(["fp4".to_owned()]));
        let err = join.redeem("h1", "n5", false, "fp5", 3_000).unwrap_err();
        assert_eq!(err, "join token already used (by node `n4`): a token admits one node only");
        join.create("h2", 3_000, 63_000).unwrap();
        let err = join.redeem_refusal("h2", "n1", true, 4_000).unwrap();
        assert_eq!(err, "node name `n1` is already in the cluster: choose another name");
        let err = join.redeem("h2", "n4", false, "fp", 4_000).unwrap_err();
        assert_eq!(err, "node name `n4` is already in the cluster: choose another name");
        join.revoke("h2", 5_000).unwrap();
        assert_eq!(join.redeem("h2", "n6", false, "fp", 6_000).unwrap_err(), "join token was revoked");
        assert_eq!(join.revoke("h2", 7_000).unwrap_err(), "join token already revoked");
        assert!(join.revoke("h1", 7_000).unwrap_err().starts_with("join token already used"));
    }

    #[test]
    fn a_removed_nodes_certificates_are_revoked_and_its_name_may_join_again() {
        let mut join = JoinState::default();
        join.create("h1", 0, 10_000).unwrap();
        join.redeem("h1", "n4", false, "fp-old", 1).unwrap();
        join.revoke_node("n4");
        assert!(join.revoked.contains("fp-old") && join.removed.contains("n4"));
        assert!(!join.certificates.contains_key("n4"));
        join.create("h2", 2, 10_000).unwrap();
        join.redeem("h2", "n4", false, "fp-new", 3).unwrap();
        assert!(!join.removed.contains("n4"), "a new certificate for the name admits it again");
        assert!(join.revoked.contains("fp-old"), "the old certificate stays refused");
        join.renewed("n4", "fp-renewed").unwrap();
        join.revoke_node("n4");
        assert!(join.revoked.contains("fp-new") && join.revoked.contains("fp-renewed"), "renewed ones too");
        assert!(join.renewed("n4", "fp-late").unwrap_err().contains("was removed"));
        assert!(join.admit_node("n4") && !join.admit_node("n4"));
    }

    #[test]
    fn tombstones_are_pruned_a_day_after_expiry() {
        let mut join = JoinState::default();
        join.create("old", 0, 1_000).unwrap();
        join.create("new", 1_000 + TOKEN_TOMBSTONE_MS, 2_000 + TOKEN_TOMBSTONE_MS).unwrap();
        assert!(!join.tokens.contains_key("old") && join.tokens.contains_key("new"));
        assert!(join.create("x", 5, 5).is_err());
    }

    #[test]
    fn token_commands_wait_for_version_0_2_and_a_rejected_redemption_changes_nothing() {
        use crate::{ClusterState, ClusterVersion, Command, CommandOutcome};
        let create = Command::TokenCreate { hash: "h".into(), expires_ms: 10_000, at_ms: 0 };
        let mut old = ClusterState::genesis();
        let CommandOutcome::Rejected { reason } = old.apply(&create) else { panic!("applied at 0.1.0") };
        assert_eq!(reason, "command `TokenCreate` needs cluster version 0.2.0, and the cluster runs at 0.1.0");
        assert!(old.join.tokens.is_empty());
        for command in [
            create.clone(),
            Command::TokenRevoke { hash: "h".into(), at_ms: 0 },
            Command::TokenRedeem {
                hash: "h".into(),
                node: "n".into(),
                address: "a".into(),
                fingerprint: "f".into(),
                at_ms: 0,
            },
            Command::NodeRevoke { name: "n".into(), at_ms: 0 },
            Command::NodeAdmit { name: "n".into(), at_ms: 0 },
            Command::CertRenewed { node: "n".into(), fingerprint: "f".into(), at_ms: 0 },
        ] {
            assert_eq!(command.required_version(), ClusterVersion::V0_2, "{}", command.name());
            assert!(crate::compat::command_to_v0_1(&command).is_err(), "{}", command.name());
        }

        let mut state = ClusterState::default();
        state.apply(&Command::NodeHello { name: "n1".into(), watchdog: None, at_ms: 0 });
        assert_eq!(state.apply(&create), CommandOutcome::Applied);
        let taken = Command::TokenRedeem {
            hash: "h".into(),
            node: "n1".into(),
            address: "192.0.2.1:7400".into(),
            fingerprint: "f1".into(),
            at_ms: 5,
        };
        let before = state.clone();
        let CommandOutcome::Rejected { reason } = state.apply(&taken) else { panic!("a taken name joined") };
        assert_eq!(reason, "node name `n1` is already in the cluster: choose another name");
        assert_eq!(state, before, "a rejected redemption changes nothing");
        let redeem = Command::TokenRedeem {
            hash: "h".into(),
            node: "n4".into(),
            address: "192.0.2.4:7400".into(),
            fingerprint: "f4".into(),
            at_ms: 5,
        };
        assert_eq!(state.apply(&redeem), CommandOutcome::Applied);
        assert_eq!(state.events.back().unwrap().what, "joined");
        assert_eq!(state.apply(&Command::NodeRevoke { name: "n4".into(), at_ms: 6 }), CommandOutcome::Applied);
        assert!(state.join.revoked.contains("f4") && state.join.removed.contains("n4"));
    }
}
