//! Leases that survive a leader's loss (issue 14, item 1): keep renewals acknowledged by a majority
//! of voters while no leader grants, and the leader's check with the voters before it acts on an
//! expired node. The pure rules are `cluster_model::{KeepLedger, LeaseHolder::kept,
//! LeaseTable::awaiting_confirmation}`; docs/safety.md has the argument.
//!
//! ```text
//!  node N, a heartbeat after the last grant was due ──Keep──> every voter: KeepLedger::keep
//!        <── KeepAck(lease) from a majority: LeaseHolder::kept(sent, shortest lease)
//!  leader, before planning with nodes whose lease ended ──ExpiryCheck(nodes)──> every voter:
//!        KeepLedger::check (time since its last keep of each; refuses them for one wait from now)
//!        <── a majority of answers: none recent → LeaseTable::confirm_expired, else LeaseTable::kept
//! ```
//!
//! A voter's refusals must outlive a restart of its daemon: they are kept in the runtime folder
//! (tmpfs, per boot), written before the answer leaves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster_api::PeerRpc;
use cluster_model::{KeepLedger, LeaseStatus, Settings};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::runtime::{self, RefusalsFile, REFUSALS_FILE};
use super::{now, Engine};

/// Keep my lease: sent by `node` to every voter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KeepRequest {
    pub(crate) node: String,
}

/// A voter kept the lease, for `lease·(1−ρ)` of its settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KeepAck {
    pub(crate) lease: Duration,
}

/// A leader of `term` asks whether these nodes may still hold a kept lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ExpiryCheck {
    pub(crate) term: u64,
    pub(crate) nodes: Vec<String>,
}

/// Per asked node, the time (ms, rounded down) since this voter last kept its lease, if a kept
/// lease may still run; and the longest wait of this voter's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ExpiryAnswer {
    pub(crate) since_keep_ms: Vec<Option<u64>>,
    pub(crate) wait: Duration,
}

/// The voter's ledger for a daemon starting now: its predecessor's refusals if the runtime folder
/// still holds them (same boot: tmpfs), else a ledger that refuses every keep for one wait.
///
/// The ledger's refusals are written back at once, even when there are none: a daemon restarted
/// later on this boot then knows it has no promise to keep, instead of refusing keeps for one wait.
pub(super) fn load_ledger(runtime_dir: &Path) -> KeepLedger {
    let ledger = match runtime::read::<RefusalsFile>(runtime_dir, REFUSALS_FILE) {
        Ok(Some(file)) => KeepLedger::restored(now(), file.refusals),
        Ok(None) => KeepLedger::new(now()),
        Err(err) => {
            tracing::warn!(error = %err, "unreadable keep refusals: refusing keeps for one lease");
            KeepLedger::new(now())
        }
    };
    if let Err(err) = runtime::write(runtime_dir, REFUSALS_FILE, &RefusalsFile { refusals: ledger.refusals() }) {
        tracing::warn!(dir = %runtime_dir.display(), error = %err, "cannot record the keep refusals");
    }
    ledger
}

impl Engine {
    /// Voter side: keep the lease of `request.node` unless this voter promised to refuse it.
    pub(crate) fn serve_keep(&self, request: &KeepRequest) -> Result<KeepAck, String> {
        let settings = self.settings();
        let kept = self.ledger.lock().expect("keep ledger lock").keep(&request.node, now(), &settings);
        if kept {
            Ok(KeepAck { lease: settings.lease_for_holder() })
        } else {
            Err(format!("{} refuses to keep the lease of {} now", self.me, request.node))
        }
    }

    /// Voter side: how long ago this voter kept each node's lease; it refuses their keeps for one
    /// wait from now, a promise recorded (in the runtime folder) before the answer leaves.
    pub(crate) async fn serve_expiry_check(&self, check: &ExpiryCheck) -> Result<ExpiryAnswer, String> {
        // Only a leader of this voter's term, or a newer one: an answer promises refusals, and a
        // deposed leader (or one restarted into its old term) judges from a table that is not the
        // cluster's, so it must not make voters refuse the keeps of live nodes.
        let term = self.node.current_term();
        if check.term < term {
            return Err(format!("{} is at term {term}: no answer to a leader of term {}", self.me, check.term));
        }
        let settings = self.settings();
        let (answer, refusals) = {
            let mut ledger = self.ledger.lock().expect("keep ledger lock");
            let at = now();
            let since: Vec<Option<u64>> = check
                .nodes
                .iter()
                .map(|node| ledger.check(node, at, &settings).map(|elapsed| elapsed.as_millis() as u64))
                .collect();
            (ExpiryAnswer { since_keep_ms: since, wait: ledger.answer_wait(at, &settings) }, ledger.refusals())
        };
        let dir = self.runtime_dir.clone();
        tokio::task::spawn_blocking(move || runtime::write(&dir, REFUSALS_FILE, &RefusalsFile { refusals }))
            .await
            .map_err(|err| err.to_string())?
            .map_err(|err| format!("cannot record the keep refusals in {}: {err}", self.runtime_dir.display()))?;
        Ok(answer)
    }

    /// Holder side: while the lease is valid but no grant came lately (half of what a grant leaves
    /// passed, [`cluster_model::keep_due`]), ask every voter to keep it; a majority keeps it (keep-only)
    /// from `sent`. One round at a time: a round waits for its answers until the stop budget.
    pub(super) fn keep_if_no_grant(self: &Arc<Self>, sent: Duration, settings: &Settings) {
        let holder = *self.holder.lock().expect("lease lock");
        let valid = holder.status(sent, settings) == LeaseStatus::Valid;
        let left = holder.left_before_stop_budget(sent, settings);
        if !valid || !cluster_model::keep_due(left, settings) || self.lease_given_up() {
            return;
        }
        let Some(round) = RoundInFlight::claim(&self.keep_in_flight) else {
            return;
        };
        let engine = self.clone();
        let settings = settings.clone();
        // The keep is useful until the lease reaches its stop budget: wait that long (a fresh TLS
        // connection to a voter, on a loaded host, takes longer than one heartbeat).
        let timeout = left.max(settings.heartbeat());
        tokio::spawn(async move {
            engine.keep_round(sent, &settings, timeout).await;
            drop(round);
        });
    }

    async fn keep_round(&self, sent: Duration, settings: &Settings, timeout: Duration) {
        let voters = self.node.voters();
        let majority = voters.len() / 2 + 1;
        let request = KeepRequest { node: self.me.clone() };
        let mut asks: futures::stream::FuturesUnordered<_> = voters
            .iter()
            .map(|voter| {
                let request = request.clone();
                async move {
                    if voter.name == self.me {
                        return self.serve_keep(&request);
                    }
                    match self
                        .node
                        .call_peer_newest::<_, Result<KeepAck, String>>(
                            &voter.name,
                            &voter.address,
                            PeerRpc::Keep,
                            &request,
                            timeout,
                        )
                        .await?
                    {
                        Some(answer) => answer,
                        None => Err(format!("{} runs clusterd 0.1.0, which keeps no lease", voter.name)),
                    }
                }
            })
            .collect();
        let (mut acks, mut shortest) = (0, None::<Duration>);
        while let Some(answer) = asks.next().await {
            if let Ok(ack) = answer {
                acks += 1;
                shortest = Some(shortest.map_or(ack.lease, |lease| lease.min(ack.lease)));
                if acks >= majority {
                    let mut holder = self.holder.lock().expect("lease lock");
                    if !self.lease_given_up() {
                        holder.kept(sent, shortest, settings);
                    }
                    drop(holder);
                    self.lease_changed.notify_one();
                    tracing::debug!(acks, "lease kept by a majority of voters");
                    return;
                }
            }
        }
        tracing::debug!(acks, majority, "lease not kept: too few voters answered");
    }

    /// Leader side: before acting on nodes whose lease ended by its table, ask every voter whether
    /// it kept their leases since. With a majority of answers, a node none of them kept recently is
    /// confirmed expired; one a voter kept is waited for until that keep has certainly ended.
    pub(super) async fn confirm_expiries(&self, nodes: Vec<String>, settings: &Settings) {
        let Some(term) = self.node.leadership() else { return };
        let voters = self.node.voters();
        let majority = voters.len() / 2 + 1;
        let check = ExpiryCheck { term, nodes: nodes.clone() };
        let timeout = self.node.timing().election_timeout_max;
        let asked_at = now();
        let mut asks: futures::stream::FuturesUnordered<_> = voters
            .iter()
            .map(|voter| {
                let check = check.clone();
                async move {
                    let answer = if voter.name == self.me {
                        self.serve_expiry_check(&check).await
                    } else {
                        match self
                            .node
                            .call_peer_newest::<_, Result<ExpiryAnswer, String>>(
                                &voter.name,
                                &voter.address,
                                PeerRpc::ExpiryCheck,
                                &check,
                                timeout,
                            )
                            .await
                        {
                            Ok(Some(answer)) => answer,
                            // A voter of v0.1.0 (mid-upgrade) never keeps a lease, and a keep needs
                            // a majority of voters that do: it answers "none kept" truthfully, and
                            // the voter in both majorities runs this release. The wait is the
                            // cluster's (v0.1.0 has no ceiling of its own).
                            Ok(None) => Ok(ExpiryAnswer {
                                since_keep_ms: vec![None; check.nodes.len()],
                                wait: settings.longest_grantor_wait(),
                            }),
                            Err(err) => Err(err),
                        }
                    };
                    (answer, now())
                }
            })
            .collect();
        let drift_ppm = settings.clock_drift_ppm;
        let mut answers = 0;
        let mut kept: BTreeMap<String, Duration> = BTreeMap::new();
        while answers < majority {
            let Some((answer, arrived)) = asks.next().await else { break };
            let Ok(answer) = answer else { continue };
            answers += 1;
            let wait = answer.wait.max(settings.longest_grantor_wait());
            for (node, since) in nodes.iter().zip(answer.since_keep_ms) {
                if let Some(elapsed_ms) = since {
                    // Counted back from the answer's arrival, shortened by the drift bound: the keep
                    // is placed late, never early.
                    let shortened = Duration::from_micros(elapsed_ms * 1_000_000u64.saturating_sub(drift_ppm) / 1_000);
                    let until = arrived.saturating_sub(shortened) + wait;
                    let slot = kept.entry(node.clone()).or_insert(until);
                    *slot = (*slot).max(until);
                }
            }
        }
        if answers < majority {
            tracing::info!(
                answers,
                majority,
                nodes = %nodes.join(", "),
                "leases ended here, but their expiry is not confirmed: too few voters answered (nothing moves)"
            );
            return;
        }
        let mut table = self.table.lock().expect("lease table lock");
        for node in nodes {
            match kept.get(&node) {
                Some(until) => {
                    tracing::info!(%node, kept_ms = until.saturating_sub(asked_at).as_millis() as u64, "lease ended here, but kept by voters: waiting");
                    table.kept(&node, *until);
                }
                None => {
                    tracing::info!(%node, "lease expired, confirmed by a majority of voters");
                    table.confirm_expired(&node);
                }
            }
        }
    }
}

/// The runtime folder of a daemon whose control socket is `socket`.
pub(crate) fn runtime_dir(socket: &Path) -> PathBuf {
    socket.parent().map_or_else(|| PathBuf::from("/run/clusterd"), Path::to_path_buf)
}

/// The one keep round in flight: claimed before it starts, released when the round ends however
/// it ends (a round whose task panicked or was dropped must not stop every later round).
struct RoundInFlight(Arc<AtomicBool>);

impl RoundInFlight {
    fn claim(flag: &Arc<AtomicBool>) -> Option<RoundInFlight> {
        let taken = flag.swap(true, Ordering::SeqCst);
        (!taken).then(|| RoundInFlight(flag.clone()))
    }
}

impl Drop for RoundInFlight {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_keep_round_that_panics_lets_the_next_round_start() {
        let flag = Arc::new(AtomicBool::new(false));
        let round = RoundInFlight::claim(&flag).expect("nothing in flight");
        assert!(RoundInFlight::claim(&flag).is_none(), "a second round started while one is in flight");
        let task = tokio::spawn(async move {
            let _round = round;
            panic!("a keep round fails");
        });
        assert!(task.await.is_err());
        assert!(RoundInFlight::claim(&flag).is_some(), "the panicked round still holds the claim");
    }

    #[test]
    fn the_runtime_folder_is_the_sockets_folder() {
        assert_eq!(runtime_dir(Path::new("/run/clusterlab/lab/n1/clusterd.sock")), Path::new("/run/clusterlab/lab/n1"));
        assert_eq!(runtime_dir(Path::new("/run/clusterd/clusterd.sock")), Path::new("/run/clusterd"));
    }
}
