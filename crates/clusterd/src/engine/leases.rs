//! Lease renewals (every node), lease grants (the leader), and the watchdog petted only while the
//! lease is valid with the stop budget left.

use std::sync::Arc;
use std::time::Duration;

use cluster_api::PeerRpc;
use cluster_model::controller::Liveness;
use cluster_model::{Command, LeaseStatus};
use serde::{Deserialize, Serialize};

use super::{now, wall_ms, Engine};

/// A node asks the leader to renew its lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LeaseRequest {
    pub(crate) node: String,
}

/// The leader confirmed its leadership with a quorum after receiving the request (a majority of
/// voters accepted its appends sent after that).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LeaseGrant {
    /// The holder may start packages only once it has applied this index.
    pub(crate) commit_index: u64,
}

impl Engine {
    /// Leader side: the renewal is recorded at its receipt time, but only after a quorum confirmed
    /// that this node still leads.
    ///
    /// A controller plan made before the renewal was recorded may have judged the node expired and
    /// reassigned its packages; the grant waits until every plan that judged it expired had its
    /// proposals answered, so that the index it returns (which the holder must apply before
    /// acting) includes them. Plans made after judge the node by this renewal (docs/safety.md).
    /// (Whether the node was alive when the renewal *arrived* says nothing: it may have expired
    /// while the quorum confirmed, or a concurrent renewal may have revived it after a plan judged
    /// it expired.)
    pub(crate) async fn grant(&self, request: &LeaseRequest) -> Result<LeaseGrant, String> {
        let received = now();
        let arrived = std::time::Instant::now();
        let settings = self.settings();
        let alive = self.table.lock().expect("lease table lock").liveness(&request.node, received, &settings);
        if alive != Liveness::Alive {
            // A node this leader does not count alive (it was just elected, or the node is back) may
            // be what a package waits for: confirm with a heartbeat sent now, not the next one.
            self.node.heartbeat_now().await;
        }
        let confirmed = self.node.confirm_after(arrived).await.map_err(|err| err.to_string())?;
        let (plan, revived) = {
            let mut table = self.table.lock().expect("lease table lock");
            let was_alive = table.liveness(&request.node, now(), &settings) == Liveness::Alive;
            table.renewed(&request.node, received);
            (table.plan_to_wait_for(&request.node), !was_alive)
        };
        if revived {
            // The node can take packages again (or a package waits for its lease to be known).
            self.wake_controller();
            tracing::info!(node = %request.node, wait_ms = arrived.elapsed().as_millis() as u64, "lease renewed: node alive for this leader");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.table.lock().expect("lease table lock").plans_done() < plan {
            if std::time::Instant::now() > deadline {
                return Err("the controller's proposals did not complete within 5 s".into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(LeaseGrant { commit_index: confirmed.max(self.node.applied_index()) })
    }
}

/// Every heartbeat: send a renewal to the leader (without waiting for the previous one), record
/// grants, keep the watchdog armed while packages are active and pet it only while the lease is
/// valid. Also announces the node (`NodeHello`) once the cluster answers, and announces again
/// (`NodeWatchdog`) whenever its watchdog becomes usable or unusable.
pub(crate) async fn heartbeat_loop(engine: Arc<Engine>) {
    // What the cluster was told of this node's watchdog; `None` before the first announcement.
    let mut announced: Option<Option<String>> = None;
    loop {
        let snapshot = engine.snapshot();
        let settings = snapshot.state.settings.clone();
        tokio::time::sleep(settings.heartbeat()).await;
        if engine.lease_given_up() {
            tend_watchdog(&engine, &settings);
            continue;
        }
        if let Some(leader) = engine.node.leader() {
            let engine = engine.clone();
            let settings = settings.clone();
            tokio::spawn(async move {
                let sent = now();
                let request = LeaseRequest { node: engine.me.clone() };
                let grant = if leader.name == engine.me {
                    engine.grant(&request).await
                } else {
                    engine
                        .node
                        .call_peer::<_, Result<LeaseGrant, String>>(
                            &leader.name,
                            &leader.address,
                            PeerRpc::Lease,
                            &request,
                            settings.lease(),
                        )
                        .await
                        .and_then(|answer| answer)
                };
                match grant {
                    Ok(grant) => {
                        let mut holder = engine.holder.lock().expect("lease lock");
                        if !engine.lease_given_up() {
                            holder.granted(sent, grant.commit_index, &settings);
                        }
                    }
                    Err(err) => tracing::debug!(leader = %leader.name, error = %err, "lease renewal failed"),
                }
            });
        }
        tend_watchdog(&engine, &settings);
        if engine.lease_remaining().is_some() && !engine.stopping() {
            announced = announce(&engine, &settings, announced).await;
        }
    }
}

/// Tells the cluster this node started (`NodeHello`), or that its watchdog became usable or
/// unusable since it last said (`NodeWatchdog`); returns what the cluster knows now.
async fn announce(
    engine: &Engine,
    settings: &cluster_model::Settings,
    announced: Option<Option<String>>,
) -> Option<Option<String>> {
    let (watchdog, reason) = match engine.usable_watchdog(settings) {
        Ok(device) => (Some(device.clone()), format!("watchdog {device} usable")),
        Err(why) => (None, why),
    };
    let command = match &announced {
        None => Command::NodeHello { name: engine.me.clone(), watchdog: watchdog.clone(), at_ms: wall_ms() },
        Some(current) if *current == watchdog => return announced,
        Some(_) => Command::NodeWatchdog {
            name: engine.me.clone(),
            watchdog: watchdog.clone(),
            reason: reason.clone(),
            at_ms: wall_ms(),
        },
    };
    if engine.propose(command).await.is_err() {
        return announced;
    }
    if watchdog.is_none() && engine.watchdog.is_some() {
        tracing::error!("{reason}: this node protects its packages by its lease only (lease-only mode)");
    } else if announced.is_some() {
        tracing::info!("{reason}");
    }
    Some(watchdog)
}

impl Engine {
    /// Arms the watchdog right away (before a start), instead of at the next heartbeat.
    pub(crate) fn tend_watchdog_now(&self) {
        let settings = self.snapshot().state.settings.clone();
        tend_watchdog(self, &settings);
    }
}

/// Armed while packages are active here, petted only while the lease is valid with the stop
/// budget left; disarmed (magic close) once nothing is active.
fn tend_watchdog(engine: &Engine, settings: &cluster_model::Settings) {
    let Some(watchdog) = &engine.watchdog else { return };
    let lease_valid = engine.holder.lock().expect("lease lock").status(now(), settings) == LeaseStatus::Valid;
    // A device that cannot time out within the stop budget is not armed at all (the node announces
    // itself lease-only instead); arming it anyway would only spread errors.
    let can_arm = super::fits_stop_budget(watchdog.as_ref(), settings.stop_budget());
    let result = if engine.any_active() {
        if !watchdog.is_armed() {
            if lease_valid && can_arm {
                let armed = watchdog.arm(settings.stop_budget());
                *engine.watchdog_fault.lock().expect("watchdog fault lock") =
                    armed.as_ref().err().map(ToString::to_string);
                armed
            } else {
                Ok(())
            }
        } else if lease_valid {
            watchdog.pet()
        } else {
            Ok(())
        }
    } else if watchdog.is_armed() {
        watchdog.disarm()
    } else {
        Ok(())
    };
    if let Err(err) = result {
        tracing::error!(error = %err, "watchdog");
    }
}

/// Whether the lease has reached its stop budget (or there is none): everything must stop.
pub(crate) fn must_stop_now(engine: &Engine, settings: &cluster_model::Settings) -> bool {
    engine.holder.lock().expect("lease lock").status(now(), settings) == LeaseStatus::MustStop
}

/// Waits until the lease reaches its stop budget.
pub(crate) async fn lease_lapse(engine: &Engine, settings: &cluster_model::Settings) {
    while !must_stop_now(engine, settings) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
