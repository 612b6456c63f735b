//! Lease renewals (every node), lease grants (the leader), and the watchdog petted only while the
//! lease is valid with the stop budget left.

use std::sync::Arc;
use std::time::Duration;

use cluster_api::PeerRpc;
use cluster_host::WatchdogError;
use cluster_model::controller::Liveness;
use cluster_model::{Command, Grant, LeaseStatus};
use serde::{Deserialize, Serialize};

use super::{now, wall_ms, Engine};

/// How often [`announce_loop`] looks when nothing woke it.
const ANNOUNCE_CHECK: Duration = Duration::from_secs(1);

/// A node asks the leader to renew its lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LeaseRequest {
    pub(crate) node: String,
}

/// The leader confirmed its leadership with a quorum after receiving the request (a majority of
/// voters accepted its appends sent after that).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LeaseGrant {
    /// The holder may start packages only once it has applied this index (the end of the leader's
    /// log at the confirmation, covering every committed entry).
    pub(crate) commit_index: u64,
    /// The leader's term (a newer leader's index replaces an older one's at the holder).
    pub(crate) term: u64,
    /// The lease granted, `lease·(1−ρ)` of the leader's settings when it recorded the renewal: the
    /// length its lease table counts (issue 11, finding 1).
    pub(crate) lease: Duration,
}

impl LeaseGrant {
    /// The grant as the holder records it.
    pub(crate) fn into_grant(self) -> Grant {
        Grant { term: self.term, commit_index: self.commit_index, lease: Some(self.lease) }
    }
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
        self.grant_all(std::slice::from_ref(request)).await.pop().expect("one answer per renewal")
    }

    /// [`Engine::grant`] for renewals that arrived together (a voter's relayed batch, docs/safety.md
    /// "Relayed renewals"): one quorum confirmation after their arrival serves them all, and each is
    /// recorded at that receipt time; a grant waits for the plans that judged any of them expired.
    pub(crate) async fn grant_all(&self, requests: &[LeaseRequest]) -> Vec<Result<LeaseGrant, String>> {
        let received = now();
        let arrived = std::time::Instant::now();
        // A removed node must lose its lease, so that what it may still own can move.
        let members: Vec<bool> = requests.iter().map(|request| self.node.is_member(&request.node)).collect();
        let refused =
            |request: &LeaseRequest| Err(format!("node {} is not a member of the cluster: no lease", request.node));
        if !members.contains(&true) {
            return requests.iter().map(refused).collect();
        }
        let settings = self.settings();
        let all_alive = {
            let table = self.table.lock().expect("lease table lock");
            requests
                .iter()
                .zip(&members)
                .filter(|(_, member)| **member)
                .all(|(request, _)| table.liveness(&request.node, received, &settings) == Liveness::Alive)
        };
        if !all_alive {
            // A node this leader does not count alive (it was just elected, or the node is back) may
            // be what a package waits for: confirm with a heartbeat sent now, not the next one.
            self.node.heartbeat_now().await;
        }
        let confirmed = match self.node.confirm_after(arrived).await {
            Ok(confirmed) => confirmed,
            Err(err) => return requests.iter().map(|_| Err(err.to_string())).collect(),
        };
        let mut answers = Vec::with_capacity(requests.len());
        let mut revived = Vec::new();
        let mut plan = 0;
        {
            let mut table = self.table.lock().expect("lease table lock");
            // The settings applied now give both the length granted and the length counted: read
            // once, under the table's lock (the controller settles a shortened lease under it too).
            let settings = self.settings();
            for (request, member) in requests.iter().zip(&members) {
                if !member {
                    answers.push(refused(request));
                    continue;
                }
                let was_alive = table.liveness(&request.node, now(), &settings) == Liveness::Alive;
                let lease = table.renewed(&request.node, received, &settings);
                plan = plan.max(table.plan_to_wait_for(&request.node));
                if !was_alive {
                    revived.push(request.node.as_str());
                }
                answers.push(Ok(LeaseGrant { commit_index: confirmed.index, term: confirmed.term, lease }));
            }
        }
        if !revived.is_empty() {
            // The node can take packages again (or a package waits for its lease to be known).
            self.wake_controller();
            for node in revived {
                tracing::info!(node = %node, wait_ms = arrived.elapsed().as_millis() as u64, "lease renewed: node alive for this leader");
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self.table.lock().expect("lease table lock").plans_done() < plan {
            if std::time::Instant::now() > deadline {
                let late = "the controller's proposals did not complete within 5 s".to_owned();
                return answers.into_iter().map(|answer| answer.and(Err(late.clone()))).collect();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        answers
    }
}

/// Every heartbeat: send a renewal to the leader (without waiting for the previous one), record
/// grants, keep the watchdog armed while packages are active and pet it only while the lease is
/// valid. Nothing in this loop waits for the cluster: renewals run in their own tasks, and
/// announcements in [`announce_loop`] (a proposal can wait up to 5 s for a slow leader, which once
/// held renewals and pets back long enough to lose the lease: issue 11, trap E).
pub(crate) async fn heartbeat_loop(engine: Arc<Engine>) {
    // The first round at once: a daemon restarted with its predecessor's lease has little of it left.
    let mut first = true;
    loop {
        let settings = engine.applied_settings();
        if !std::mem::take(&mut first) {
            tokio::time::sleep(cluster_model::until_next_renewal(settings.heartbeat(), wall_us())).await;
        }
        if engine.lease_given_up() {
            tend_watchdog(&engine, &settings);
            continue;
        }
        engine.keep_if_no_grant(now(), &settings);
        if let Some(leader) = engine.node.leader() {
            let engine = engine.clone();
            let settings = settings.clone();
            tokio::spawn(async move {
                let sent = now();
                let term_at_send = engine.node.current_term();
                let request = LeaseRequest { node: engine.me.clone() };
                let relay =
                    if leader.name == engine.me { None } else { engine.relay_for_renewal(&leader, sent, &settings) };
                let grant = if leader.name == engine.me {
                    engine.grant(&request).await.map(LeaseGrant::into_grant)
                } else if let Some(relay) = relay {
                    engine.renew_through(&relay, &settings).await.map(LeaseGrant::into_grant)
                } else {
                    // In the cluster's protocol: a v0.1.0 leader answers with the index alone.
                    let renewal = async {
                        let payload = crate::compat::lease_request(&request, engine.node.protocol())?;
                        let answer = engine
                            .node
                            .call_peer_raw(&leader.name, &leader.address, PeerRpc::Lease, payload, settings.lease())
                            .await?;
                        crate::compat::lease_answer(&answer, term_at_send)
                    };
                    renewal.await
                };
                match grant {
                    Ok(grant) => {
                        let mut holder = engine.holder.lock().expect("lease lock");
                        if !engine.lease_given_up() {
                            holder.granted(sent, grant, &engine.settings());
                        }
                    }
                    Err(err) => tracing::debug!(leader = %leader.name, error = %err, "lease renewal failed"),
                }
            });
        }
        tend_watchdog(&engine, &settings);
        persist_lease(&engine, &settings);
        // The lease watch sleeps until the stop budget's instant on the monotonic clock, which
        // stops during a suspend while the lease's clock does not: a lease that ran out meanwhile
        // is seen here, one heartbeat after the resume at most (`executor::watch_lease`).
        if !*engine.must_stop.borrow() && must_stop_now(&engine, &settings) {
            engine.lease_changed.notify_one();
        }
    }
}

/// Microseconds since the Unix epoch: the phase of renewals only, never a safety decision.
fn wall_us() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_micros())
}

/// Leaves the lease in the runtime folder for a daemon restarted after a crash (`runtime.rs`),
/// when it changed since the last write.
pub(super) fn persist_lease(engine: &Engine, settings: &cluster_model::Settings) {
    let current = super::runtime::LeaseFile {
        end: engine.holder.lock().expect("lease lock").end(),
        stop_budget: settings.stop_budget(),
        watchdog_armed: engine.watchdog.as_ref().is_some_and(|watchdog| watchdog.is_armed()),
        active: engine.active.lock().expect("active lock").iter().cloned().collect(),
    };
    let written = engine.lease_record.lock().expect("lease record lock").record(&engine.runtime_dir, current);
    if let Err(err) = written {
        tracing::warn!(dir = %engine.runtime_dir.display(), error = %err, "cannot record the lease for a restart");
    }
}

/// Announces the node (`NodeHello`) once it holds a lease, and again (`NodeWatchdog`) whenever its
/// watchdog becomes usable or unusable; each proposal awaited here, away from renewals and pets.
/// Checked when the lease comes or goes, the settings change or arming the watchdog fails or
/// succeeds again, and every [`ANNOUNCE_CHECK`] (a failed proposal is retried then): an idle node
/// wakes for it once a second, not at every heartbeat.
pub(crate) async fn announce_loop(engine: Arc<Engine>) {
    // What the cluster was told of this node's watchdog; `None` before the first announcement.
    let mut announced: Option<Option<String>> = None;
    let mut lease_updates = engine.must_stop.subscribe();
    let mut settings_updates = engine.settings.subscribe();
    loop {
        tokio::select! {
            () = tokio::time::sleep(ANNOUNCE_CHECK) => {}
            () = engine.announce_wake.notified() => {}
            changed = lease_updates.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            changed = settings_updates.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        let settings = engine.applied_settings();
        if engine.lease_remaining().is_some() && !engine.stopping() && !engine.lease_given_up() {
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
        let settings = self.applied_settings();
        tend_watchdog(self, &settings);
    }
}

/// Armed while packages are active here, petted only while the lease is valid with the stop
/// budget left; disarmed (magic close) once nothing is active.
///
/// - The timeout is the stop budget: when the budget changes the watchdog is armed again with the
///   new one before its next pet (a longer timeout than the budget would reset the node after its
///   lease ended: issue 11, finding 1). Setting a timeout pets, so only while the lease is valid.
/// - A driver with `nowayout` cannot be disarmed: once nothing is active it is petted whatever the
///   lease (it protects nothing then), else it would reset a healthy node (issue 11, trap C). The
///   decision is taken under the `active` lock, and a start checks its lease after it marked its
///   package active (`Worker::start`), so such a pet never outlasts the lease of a started package.
/// - A device that cannot time out within the stop budget is not armed (the node announces itself
///   lease-only instead); one armed before the budget shrank below what it can do is disarmed.
fn tend_watchdog(engine: &Engine, settings: &cluster_model::Settings) {
    let Some(watchdog) = &engine.watchdog else { return };
    let budget = settings.stop_budget();
    let active = engine.active.lock().expect("active lock");
    let lease_valid = engine.holder.lock().expect("lease lock").status(now(), settings) == LeaseStatus::Valid;
    let can_arm = super::fits_stop_budget(watchdog.as_ref(), budget);
    let mut armed_for = engine.watchdog_armed_for.lock().expect("watchdog lock");
    let arm = |armed_for: &mut Option<Duration>| {
        let armed = watchdog.arm(budget);
        let fault = armed.as_ref().err().map(ToString::to_string);
        if std::mem::replace(&mut *engine.watchdog_fault.lock().expect("watchdog fault lock"), fault.clone()) != fault {
            engine.announce_wake.notify_one();
        }
        *armed_for = armed.is_ok().then_some(budget);
        armed
    };
    let result = if !active.is_empty() {
        match (watchdog.is_armed(), lease_valid, can_arm) {
            (false, true, true) => arm(&mut armed_for),
            (true, true, true) if *armed_for == Some(budget) => watchdog.pet(),
            (true, true, true) => arm(&mut armed_for),
            (true, _, false) => {
                tracing::error!("the stop budget is shorter than the watchdog can time out: disarming it (lease-only)");
                watchdog.disarm().map(|()| *armed_for = None)
            }
            // Not valid: no pet; the timer runs out unless the lease comes back (or stops finish).
            _ => Ok(()),
        }
    } else if watchdog.is_armed() {
        match watchdog.disarm() {
            Ok(()) => {
                *armed_for = None;
                Ok(())
            }
            Err(WatchdogError::Nowayout { .. }) => {
                if !engine.nowayout_noted.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    tracing::warn!(
                        "watchdog {} has nowayout: it cannot be disarmed, so it stays armed and is petted while \
                         nothing is active; stopping clusterd now resets the node once its timeout passes",
                        watchdog.describe()
                    );
                }
                match can_arm {
                    true if *armed_for != Some(budget) => arm(&mut armed_for),
                    true => watchdog.pet(),
                    false => Ok(()),
                }
            }
            Err(err) => Err(err),
        }
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
