//! Lease renewals of learners relayed by a voter, so that a leader of many nodes answers a few
//! messages per heartbeat instead of one per node (issue 14, item 4).
//!
//! ```text
//!  learner L, lease fresh ──LeaseRelay──> voter V = cluster_model::relay_voter(L, voters, leader)
//!  V: its own renewal and those that reach it within RELAY_WINDOW ──LeaseBatch──> leader:
//!     Engine::grant_all (one confirmation)
//!  leader ──grants──> V ──each grant──> its learner: LeaseHolder::granted(L's send time, grant)
//! ```
//!
//! The leader grants a relayed renewal exactly as a direct one, counted from the batch's receipt,
//! which follows the learner's send: a relay only delays a renewal (docs/safety.md, "Relayed
//! renewals"). A learner whose lease is no longer fresh (`cluster_model::renew_through_relay`), or
//! whose relay failed in the last [`DIRECT_AFTER_FAILURE`], renews with the leader directly.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_api::PeerRpc;
use cluster_model::{NodeInfo, Settings};
use tokio::sync::oneshot;

use super::leases::{LeaseGrant, LeaseRequest};
use super::Engine;

/// How long a voter gathers renewals before it carries them to the leader. Every node renews at
/// the same phase of the wall clock (`cluster_model::until_next_renewal`), so one heartbeat's
/// renewals reach a relay within a few milliseconds of each other.
const RELAY_WINDOW: Duration = Duration::from_millis(3);

/// How long a learner renews with the leader directly after its relay failed.
const DIRECT_AFTER_FAILURE: Duration = Duration::from_secs(10);

type Waiter = oneshot::Sender<Result<LeaseGrant, String>>;

/// Both sides of the relay.
#[derive(Default)]
pub(crate) struct Relay {
    /// Voter side: renewals waiting for the next batch.
    pending: Mutex<Vec<(LeaseRequest, Waiter)>>,
    /// Learner side: how this node renews.
    route: Mutex<Route>,
}

#[derive(Default)]
struct Route {
    /// The relay of the last renewal, `None` for the leader directly (for the log).
    through: Option<String>,
    /// Renew with the leader directly until then (a relay failed).
    direct_until: Option<Instant>,
}

impl Engine {
    /// Holder side: the voter that carries this renewal (sent at `sent`; this node itself when it is
    /// a voter that does not lead), or `None` to renew with `leader` directly: no voter but the
    /// leader exists, a member may run v0.1.0 (which knows no relay), the lease is not fresh, or a
    /// relay failed lately.
    pub(super) fn relay_for_renewal(&self, leader: &NodeInfo, sent: Duration, settings: &Settings) -> Option<NodeInfo> {
        let chosen = self.choose_relay(leader, sent, settings);
        let mut route = self.relay.route.lock().expect("relay route lock");
        let through = chosen.as_ref().map(|relay| relay.name.clone());
        if route.through != through {
            match &through {
                Some(relay) => {
                    tracing::info!(relay = %relay, leader = %leader.name, "lease renewals relayed by a voter")
                }
                None if route.through.is_some() => {
                    tracing::info!(leader = %leader.name, "lease renewals go to the leader directly")
                }
                None => {}
            }
            route.through = through;
        }
        chosen
    }

    fn choose_relay(&self, leader: &NodeInfo, sent: Duration, settings: &Settings) -> Option<NodeInfo> {
        if self.node.protocol() != cluster_api::PROTOCOL_VERSION {
            return None;
        }
        if self.relay.route.lock().expect("relay route lock").direct_until.is_some_and(|until| Instant::now() < until) {
            return None;
        }
        let left = self.holder.lock().expect("lease lock").left_before_stop_budget(sent, settings);
        if !cluster_model::renew_through_relay(left, settings) {
            return None;
        }
        let voters = self.node.voters();
        let relay = cluster_model::relay_voter(&self.me, voters.iter().map(|voter| voter.name.as_str()), &leader.name)?
            .to_owned();
        voters.into_iter().find(|voter| voter.name == relay)
    }

    /// Learner side: the renewal through `relay` failed; renew with the leader directly for a while.
    pub(super) fn relay_failed(&self, relay: &str, error: &str) {
        let mut route = self.relay.route.lock().expect("relay route lock");
        let was_avoided = route.direct_until.is_some_and(|until| Instant::now() < until);
        route.direct_until = Some(Instant::now() + DIRECT_AFTER_FAILURE);
        if !was_avoided {
            tracing::warn!(relay = %relay, error = %error, "lease renewal through a voter failed: renewing with the leader directly for {DIRECT_AFTER_FAILURE:?}");
        }
    }

    /// Learner side: a renewal through `relay` (this voter's own batch when it is this node); the
    /// grant, or why none came.
    pub(super) async fn renew_through(
        self: &Arc<Self>,
        relay: &NodeInfo,
        settings: &Settings,
    ) -> Result<LeaseGrant, String> {
        let request = LeaseRequest { node: self.me.clone() };
        let grant = if relay.name == self.me {
            self.serve_relay(request).await
        } else {
            let answer = self
                .node
                .call_peer_newest::<_, Result<LeaseGrant, String>>(
                    &relay.name,
                    &relay.address,
                    PeerRpc::LeaseRelay,
                    &request,
                    settings.lease(),
                )
                .await;
            match answer {
                Ok(Some(answer)) => answer,
                Ok(None) => Err(format!("{} runs clusterd 0.1.0, which relays no lease", relay.name)),
                Err(err) => Err(err),
            }
        };
        if let Err(err) = &grant {
            self.relay_failed(&relay.name, err);
        }
        grant
    }

    /// Voter side: carry `request` to the leader with the other renewals that reach this voter
    /// within [`RELAY_WINDOW`]; the leader's answer to it.
    pub(crate) async fn serve_relay(self: &Arc<Self>, request: LeaseRequest) -> Result<LeaseGrant, String> {
        let (answer, answered) = oneshot::channel();
        let first = {
            let mut pending = self.relay.pending.lock().expect("relay lock");
            pending.push((request, answer));
            pending.len() == 1
        };
        if first {
            let engine = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(RELAY_WINDOW).await;
                engine.carry_pending().await;
            });
        }
        answered.await.unwrap_or_else(|_| Err(format!("relay {} dropped the renewal", self.me)))
    }

    /// Voter side: sends the gathered renewals to the leader and hands each its answer.
    async fn carry_pending(&self) {
        let batch = std::mem::take(&mut *self.relay.pending.lock().expect("relay lock"));
        let (requests, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        match self.carry(&requests).await {
            Ok(answers) if answers.len() == waiters.len() => {
                for (waiter, answer) in waiters.into_iter().zip(answers) {
                    let _ = waiter.send(answer);
                }
            }
            outcome => {
                let error = match outcome {
                    Ok(answers) => {
                        format!("the leader answered {} grants for {} relayed renewals", answers.len(), waiters.len())
                    }
                    Err(err) => format!("relay {}: {err}", self.me),
                };
                for waiter in waiters {
                    let _ = waiter.send(Err(error.clone()));
                }
            }
        }
    }

    async fn carry(&self, requests: &[LeaseRequest]) -> Result<Vec<Result<LeaseGrant, String>>, String> {
        let leader = self.node.leader().ok_or_else(|| "knows no leader".to_owned())?;
        if leader.name == self.me {
            // Became the leader since the learner chose this relay.
            return Ok(self.grant_all(requests).await);
        }
        let settings = self.settings();
        let answer = self
            .node
            .call_peer_newest::<_, Result<Vec<Result<LeaseGrant, String>>, String>>(
                &leader.name,
                &leader.address,
                PeerRpc::LeaseBatch,
                &requests,
                settings.lease(),
            )
            .await?;
        answer.unwrap_or_else(|| Err(format!("leader {} runs clusterd 0.1.0, which relays no lease", leader.name)))
    }
}
