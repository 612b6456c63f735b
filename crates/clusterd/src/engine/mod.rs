//! The failover engine of one node: lease renewals and the watchdog (`leases.rs`), the controller
//! on the leader (`controller.rs`), and the executor that runs this node's packages (`executor.rs`).
//!
//! ```text
//!   replicated state ──(applied)──┬──> executor::supervise ──changed package──> its worker (one per package)
//!                                 └──> Snapshot (built on demand) ──> controller (leader only) ──> Assign / Fence
//!   heartbeat loop ── Lease RPC ──> leader: confirm quorum, LeaseTable.renewed ──grant──> LeaseHolder
//!   (a learner's renewal: ── LeaseRelay ──> a voter ── LeaseBatch ──> leader, `relay.rs`)
//!   LeaseHolder ──> lease watch (must stop: at the stop budget) ──> workers; watchdog (pet only while Valid)
//! ```
//! The protocol and its safety argument: docs/safety.md.

mod capacity;
mod controller;
mod executor;
mod keeps;
mod leases;
mod relay;
mod role;
mod runtime;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cluster_agents::AgentOptions;
use cluster_api::PeerRpc;
use cluster_host::Fencer;
use cluster_host::Host;
use cluster_host::Watchdog;
use cluster_model::{ClusterState, Command, CommandOutcome, KeepLedger, LeaseHolder, LeaseTable, Phase, Settings};
use cluster_raft::{ConsensusError, ConsensusNode};
use tokio::sync::{watch, Notify};

pub(crate) use keeps::{runtime_dir, ExpiryCheck, KeepRequest};
pub(crate) use leases::{LeaseGrant, LeaseRequest};

/// The applied replicated state (at least as recent as `applied`), as the engine reads it: settings,
/// packages and nodes. The key-value map and the event history are left empty (the engine never reads
/// them, and a large key-value map must not be copied for the controller).
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) state: ClusterState,
    pub(crate) applied: u64,
}

/// Shared by the engine's tasks and the request dispatcher.
pub(crate) struct Engine {
    pub(crate) node: Arc<ConsensusNode>,
    me: String,
    host: Host,
    agents: AgentOptions,
    holder: Mutex<LeaseHolder>,
    table: Mutex<LeaseTable>,
    watchdog: Option<Arc<dyn Watchdog>>,
    fencer: Arc<dyn Fencer>,
    /// Nodes a fence is running against (leader only).
    fencing: Mutex<BTreeSet<String>>,
    /// Packages whose resources may be active on this node (arms the watchdog).
    active: Mutex<BTreeSet<String>>,
    /// The last snapshot built, reused while the applied index has not moved.
    snapshot: Mutex<Option<Arc<Snapshot>>>,
    /// Settings of the applied state (published by `executor::supervise`).
    settings: watch::Sender<Arc<Settings>>,
    /// Applied index up to which `executor::supervise` handed every worker its package.
    applied: watch::Sender<u64>,
    /// This node's lease is at its stop budget or absent (published by `executor::watch_lease`).
    must_stop: watch::Sender<bool>,
    /// The daemon is stopping and gave its lease up: no more renewals (see `Engine::leave`).
    lease_given_up: AtomicBool,
    /// A keep round is waiting for the voters' answers (`keeps::keep_if_no_grant`).
    keep_in_flight: Arc<AtomicBool>,
    /// Wakes the lease watch when the lease changed other than by running out (given up).
    lease_changed: Notify,
    /// Something the controller's view depends on changed outside the lease table's clock and the
    /// applied state (a renewal revived a node, a fence ended): it plans now, not at its deadline.
    controller_wake: Notify,
    /// `Engine::leave` began: the node announces nothing any more.
    stopping: AtomicBool,
    /// Why the last attempt to arm the watchdog failed (cleared by a successful arm).
    watchdog_fault: Mutex<Option<String>>,
    /// Wakes `leases::announce_loop`: the watchdog's fault changed.
    announce_wake: Notify,
    /// The stop budget the watchdog was last armed with (its timeout), while armed.
    watchdog_armed_for: Mutex<Option<Duration>>,
    /// The watchdog refused a magic close (`nowayout`) and the log said so.
    nowayout_noted: AtomicBool,
    /// The node file says `role = "witness"`.
    witness: bool,
    /// This node as a voter: the keep renewals it acknowledged, the refusals it promised.
    ledger: Mutex<KeepLedger>,
    /// The runtime folder (tmpfs: the socket's folder): what must outlive a restart of the daemon
    /// but not a reboot.
    runtime_dir: std::path::PathBuf,
    /// The lease file in the runtime folder, as last written (every renewal, and at a stop).
    lease_record: Mutex<runtime::LeaseRecord>,
    /// What this node offers to packages' `needs` (node file), announced by `capacity::announce_loop`.
    capacity: std::collections::BTreeMap<String, u64>,
    /// Learners' renewals this voter carries to the leader; the voter this learner renews through.
    relay: relay::Relay,
    /// Packages whose failed stop a daemon of this boot reported, with the epoch (the runtime
    /// folder's `stop-failures.json`): never started again at that epoch.
    stop_failures: Mutex<std::collections::BTreeMap<String, u64>>,
}

/// Whether `watchdog` protects a node whose stop budget is `stop_budget`: `Ok(its description)`,
/// or why not (it cannot time out that fast, or its last arm failed with `fault`).
fn watchdog_usability(watchdog: &dyn Watchdog, stop_budget: Duration, fault: Option<&str>) -> Result<String, String> {
    let shortest = watchdog.shortest_timeout();
    if !fits_stop_budget(watchdog, stop_budget) {
        return Err(format!(
            "watchdog {} cannot time out within the stop budget of {stop_budget:?} (its shortest timeout is \
             {shortest:?}): raise the stop budget to at least that (`clusterctl cluster set lease` or `stop_budget`, \
             docs/fencing.md)",
            watchdog.describe()
        ));
    }
    if let Some(fault) = fault {
        return Err(format!("watchdog {} could not be armed: {fault}", watchdog.describe()));
    }
    Ok(watchdog.describe())
}

/// Whether `watchdog` can be armed with a timeout of `stop_budget` (DESIGN §5: timeout ≤ stop budget).
fn fits_stop_budget(watchdog: &dyn Watchdog, stop_budget: Duration) -> bool {
    stop_budget >= watchdog.shortest_timeout()
}

/// The stop failures a daemon of this boot reported (`stop-failures.json`); none when absent. An
/// unreadable file is logged and read as none.
fn load_stop_failures(runtime_dir: &std::path::Path) -> std::collections::BTreeMap<String, u64> {
    match runtime::read::<runtime::StopFailuresFile>(runtime_dir, runtime::STOP_FAILURES_FILE) {
        Ok(file) => file.map(|file| file.packages).unwrap_or_default(),
        Err(err) => {
            tracing::warn!(error = %err, "unreadable record of failed stops");
            Default::default()
        }
    }
}

/// The lease of the previous daemon of this boot, from the runtime folder, if it still runs with
/// its stop budget left: its end and the packages that may be active here.
fn restored_lease(runtime_dir: &std::path::Path) -> Option<(Duration, BTreeSet<String>)> {
    let file = match runtime::read::<runtime::LeaseFile>(runtime_dir, runtime::LEASE_FILE) {
        Ok(file) => file?,
        Err(err) => {
            tracing::warn!(error = %err, "unreadable lease of the previous daemon: starting without a lease");
            return None;
        }
    };
    let end = file.end.filter(|end| now() + file.stop_budget < *end)?;
    tracing::info!(
        remaining_ms = end.saturating_sub(now()).as_millis() as u64,
        packages = %file.active.join(", "),
        "the previous daemon's lease still runs: adopting what runs, starting nothing before a grant"
    );
    Some((end, file.active.into_iter().collect()))
}

/// Right after a restart of the daemon, before anything slow: if the previous daemon of this boot
/// armed the watchdog and its lease still runs with the stop budget left, arm (hence pet) the
/// watchdog again now, so that it does not reset the node while this daemon starts (issue 14,
/// item 2). The engine takes the armed device over.
pub(crate) fn rearm_after_restart(runtime_dir: &std::path::Path, watchdog: Option<&Arc<dyn Watchdog>>) {
    let Some(watchdog) = watchdog else { return };
    let Ok(Some(file)) = runtime::read::<runtime::LeaseFile>(runtime_dir, runtime::LEASE_FILE) else { return };
    let valid = file.end.is_some_and(|end| now() + file.stop_budget < end);
    if !(valid && file.watchdog_armed) {
        return;
    }
    match watchdog.arm(file.stop_budget) {
        Ok(()) => {
            tracing::info!(device = %watchdog.describe(), "watchdog re-armed: the previous daemon's lease still runs")
        }
        Err(err) => tracing::error!(error = %err, "watchdog could not be re-armed after the restart"),
    }
}

/// The lease clock (`CLOCK_BOOTTIME`: it counts a suspend), as a duration since an arbitrary
/// origin. Every lease decision of this node reads it.
pub(crate) fn now() -> Duration {
    cluster_host::lease_clock()
}

/// Wall clock in ms since the Unix epoch, for events only (never for safety decisions).
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Engine {
    #[allow(clippy::too_many_arguments)] // the composition root's parts, each named
    pub(crate) fn new(
        node: Arc<ConsensusNode>,
        host: Host,
        agents: AgentOptions,
        watchdog: Option<Arc<dyn Watchdog>>,
        fencer: Arc<dyn Fencer>,
        runtime_dir: std::path::PathBuf,
        capacity: std::collections::BTreeMap<String, u64>,
        witness: bool,
    ) -> Arc<Engine> {
        let me = node.me().name.clone();
        let ledger = keeps::load_ledger(&runtime_dir);
        let stop_failures = load_stop_failures(&runtime_dir);
        // The lease of the daemon this one replaces (same boot), while it still runs: keep what runs
        // (those packages count as active until probed), start nothing before a grant.
        let (holder, active) = match restored_lease(&runtime_dir) {
            Some((end, active)) => (LeaseHolder::restored(end), active),
            None => (LeaseHolder::default(), BTreeSet::new()),
        };
        Arc::new(Engine {
            node,
            me,
            host,
            agents,
            holder: Mutex::new(holder),
            table: Mutex::new(LeaseTable::default()),
            watchdog,
            fencer,
            fencing: Mutex::new(BTreeSet::new()),
            active: Mutex::new(active),
            snapshot: Mutex::new(None),
            settings: watch::channel(Arc::new(Settings::default())).0,
            applied: watch::channel(0).0,
            must_stop: watch::channel(true).0,
            lease_given_up: AtomicBool::new(false),
            keep_in_flight: Arc::new(AtomicBool::new(false)),
            lease_changed: Notify::new(),
            controller_wake: Notify::new(),
            stopping: AtomicBool::new(false),
            watchdog_fault: Mutex::new(None),
            announce_wake: Notify::new(),
            watchdog_armed_for: Mutex::new(None),
            nowayout_noted: AtomicBool::new(false),
            witness,
            ledger: Mutex::new(ledger),
            runtime_dir,
            lease_record: Mutex::new(runtime::LeaseRecord::default()),
            capacity,
            relay: relay::Relay::default(),
            stop_failures: Mutex::new(stop_failures),
        })
    }

    /// The epoch at which a daemon of this boot reported `package`'s stop failed, if any.
    pub(crate) fn stop_failure_of(&self, package: &str) -> Option<u64> {
        self.stop_failures.lock().expect("stop failures lock").get(package).copied()
    }

    /// Records, before the report leaves, that `package`'s stop failed at `epoch` (a restarted
    /// daemon must not start it again at that epoch either). Entries of packages gone or at
    /// another epoch in the applied state are dropped.
    pub(crate) fn record_stop_failure(&self, package: &str, epoch: u64) {
        let mut failures = self.stop_failures.lock().expect("stop failures lock");
        let current: std::collections::BTreeMap<String, u64> = self.node.read_local(|state| {
            failures.keys().filter_map(|name| state.packages.get(name).map(|p| (name.clone(), p.epoch))).collect()
        });
        failures.retain(|name, marked| current.get(name) == Some(marked));
        failures.insert(package.to_owned(), epoch);
        let file = runtime::StopFailuresFile { packages: failures.clone() };
        if let Err(err) = runtime::write(&self.runtime_dir, runtime::STOP_FAILURES_FILE, &file) {
            tracing::warn!(dir = %self.runtime_dir.display(), error = %err, "cannot record a failed stop for a restart");
        }
    }

    /// Starts the engine's tasks.
    pub(crate) fn start(self: &Arc<Self>) {
        tokio::spawn(executor::supervise(self.clone()));
        tokio::spawn(executor::watch_lease(self.clone()));
        tokio::spawn(leases::heartbeat_loop(self.clone()));
        tokio::spawn(leases::announce_loop(self.clone()));
        tokio::spawn(capacity::announce_loop(self.clone()));
        tokio::spawn(controller::controller_loop(self.clone()));
        if self.witness {
            tokio::spawn(role::announce_witness(self.clone()));
        }
    }

    /// The applied state as the engine reads it; copied from the state machine only when the applied
    /// index moved since the last copy (an idle node copies nothing).
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        let applied = self.node.applied_index();
        let mut cached = self.snapshot.lock().expect("snapshot lock");
        if let Some(snapshot) = cached.as_ref().filter(|snapshot| snapshot.applied == applied) {
            return snapshot.clone();
        }
        let state = self.node.read_local(|state| ClusterState {
            settings: state.settings.clone(),
            packages: state.packages.clone(),
            nodes: state.nodes.clone(),
            ..ClusterState::default()
        });
        let snapshot = Arc::new(Snapshot { state, applied });
        *cached = Some(snapshot.clone());
        snapshot
    }

    /// Drops the copy [`Engine::snapshot`] keeps (a copy of every package of the cluster).
    fn forget_snapshot(&self) {
        self.snapshot.lock().expect("snapshot lock").take();
    }

    /// The settings of the applied state, read from it now (no copy of the packages): the lease
    /// loop's, which must not wait for [`Engine::settings`], published only once the executor
    /// handed every worker its package.
    pub(crate) fn applied_settings(&self) -> Settings {
        self.node.read_local(|state| state.settings.clone())
    }

    /// Settings of the applied state.
    fn settings(&self) -> Arc<Settings> {
        self.settings.borrow().clone()
    }

    /// Proposes a command: locally when this node leads, else through the leader.
    pub(crate) async fn propose(&self, command: Command) -> Result<CommandOutcome, String> {
        match self.node.write(command.clone()).await {
            Ok(outcome) => Ok(outcome),
            Err(ConsensusError::NotLeader { leader: Some(leader), .. }) if leader.name != self.me => {
                let timeout = self.node.timing().request_timeout;
                let payload = crate::compat::propose_request(&command, self.node.protocol())?;
                let answer =
                    self.node.call_peer_raw(&leader.name, &leader.address, PeerRpc::Propose, payload, timeout).await?;
                crate::compat::propose_answer(&answer)
            }
            Err(err) => Err(err.to_string()),
        }
    }

    /// Serves a `Propose` peer RPC: only the leader proposes.
    pub(crate) async fn serve_propose(&self, command: Command) -> Result<CommandOutcome, String> {
        self.node.write(command).await.map_err(|err| err.to_string())
    }

    /// The watchdog this node can announce as its protection with these settings, or why none:
    /// a device that cannot time out within the stop budget, or that failed to arm, protects
    /// nothing, and the node must say it runs lease-only (`status` then warns about it).
    pub(crate) fn usable_watchdog(&self, settings: &Settings) -> Result<String, String> {
        let Some(watchdog) = &self.watchdog else { return Err("no watchdog configured".into()) };
        let fault = self.watchdog_fault.lock().expect("watchdog fault lock").clone();
        watchdog_usability(watchdog.as_ref(), settings.stop_budget(), fault.as_deref())
    }

    fn set_active(&self, package: &str, active: bool) {
        let mut set = self.active.lock().expect("active lock");
        if active {
            set.insert(package.to_owned());
        } else {
            set.remove(package);
        }
    }

    /// The controller's view and the lease of every node, for `status` and `pkg plan`.
    pub(crate) fn view(&self) -> cluster_model::controller::View {
        controller::current_view(self)
    }

    fn wake_controller(&self) {
        self.controller_wake.notify_one();
    }

    /// Remaining lease of this node.
    pub(crate) fn lease_remaining(&self) -> Option<Duration> {
        self.holder.lock().expect("lease lock").remaining(now())
    }

    /// Stops renewing and forgets the lease: every package stops here at once, as at a lease lapse
    /// (frozen ones too: the lease outranks the freeze), and nothing starts again.
    fn give_up_lease(&self) {
        // Under the lease lock: a grant arriving now is either recorded before and revoked here,
        // or sees the flag and is dropped (`leases::heartbeat_loop`).
        let mut holder = self.holder.lock().expect("lease lock");
        self.lease_given_up.store(true, Ordering::SeqCst);
        holder.revoke();
        drop(holder);
        self.lease_changed.notify_one();
    }

    /// `Engine::leave` began.
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn lease_given_up(&self) -> bool {
        self.lease_given_up.load(Ordering::SeqCst)
    }

    /// `systemctl stop clusterd` (SIGTERM): hands this node's packages over before the daemon exits,
    /// so that stopping the daemon never leaves resources running without a lease (in lease-only
    /// mode that would let another node start them), nor makes the watchdog reset the node.
    ///
    /// ```text
    ///  propose NodeLeave ──committed──> the controller stops each package here (`stopping`), the
    ///        │                          owner reports `Stopped`, the controller places it elsewhere
    ///        │ no leader, no quorum, or not handed over within `limit`
    ///        v
    ///  give the lease up: every package stops here (reverse order); the cluster reassigns them once
    ///  this node's lease has expired, as for a crashed node
    ///  then: hand Raft leadership to another voter if this node leads; disarm the watchdog if
    ///  nothing is active
    /// ```
    ///
    /// Frozen packages are left running (maintenance) when the cluster was told (`NodeLeave`
    /// committed: an unfreeze then blocks them on a node without a watchdog); once the lease is
    /// given up they stop like the others, and the daemon waits for that. A blocked package (its
    /// stop failed) is left as it is: it is never started elsewhere until fenced or cleaned up.
    pub(crate) async fn leave(&self, limit: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + limit;
        let handed_over = if self.node.leader().is_some() {
            let leave = Command::NodeLeave { name: self.me.clone(), at_ms: wall_ms() };
            match tokio::time::timeout(self.node.timing().request_timeout, self.propose(leave)).await {
                Ok(Ok(_)) => {
                    tracing::info!("stopping: the controller moves this node's packages to other nodes");
                    self.wait_until_left(deadline, true).await
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "stopping: could not tell the cluster");
                    false
                }
                Err(_) => {
                    tracing::warn!("stopping: the cluster did not answer in time");
                    false
                }
            }
        } else {
            false
        };
        if !handed_over {
            tracing::warn!("stopping: giving the lease up; this node's packages stop here and move once it expires");
            self.give_up_lease();
            self.wait_until_left(deadline, false).await;
        }
        match self.node.hand_over_leadership().await {
            Ok(Some(successor)) => tracing::info!(%successor, "stopping: leadership handed over"),
            Ok(None) => {}
            Err(err) => tracing::warn!(error = %err, "stopping: leadership not handed over"),
        }
        self.tend_watchdog_now();
        let settings = self.settings();
        leases::persist_lease(self, &settings);
        let left: Vec<String> = self.active.lock().expect("active lock").iter().cloned().collect();
        if left.is_empty() {
            tracing::info!("stopping: no package is active here");
        } else {
            tracing::error!(
                packages = %left.join(", "),
                watchdog = self.watchdog.is_some(),
                "stopping with packages still active here (frozen, blocked, or their stop did not end); \
                 with a watchdog armed the node resets once the stop budget has passed"
            );
        }
    }

    /// Waits until nothing but frozen or blocked packages is active here and, when `owned`, until
    /// the applied state gives this node no package but those; false if `deadline` came first.
    /// Once the lease is given up (`owned` false) frozen packages are stopped too (the lease
    /// outranks the freeze), and waited for: exiting during their stop would leave them running
    /// with nothing to stop them, on a node the cluster may not even know is leaving.
    async fn wait_until_left(&self, deadline: Instant, owned: bool) -> bool {
        loop {
            let snapshot = self.snapshot();
            let packages = &snapshot.state.packages;
            let kept =
                |name: &str| packages.get(name).is_some_and(|p| (owned && p.frozen) || p.phase == Phase::Blocked);
            let active_here = self.active.lock().expect("active lock").iter().any(|name| !kept(name));
            let owned_here = owned
                && packages.iter().any(|(name, package)| package.owner.as_deref() == Some(&self.me) && !kept(name));
            if !active_here && !owned_here {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster_host::FakeWatchdog;

    #[test]
    fn failed_stops_recorded_by_a_daemon_are_read_back_by_the_next_one() {
        let folder = tempfile::tempdir().unwrap();
        assert!(load_stop_failures(folder.path()).is_empty(), "none on a fresh boot");
        let file = runtime::StopFailuresFile { packages: [("db".to_owned(), 7)].into() };
        runtime::write(folder.path(), runtime::STOP_FAILURES_FILE, &file).unwrap();
        assert_eq!(load_stop_failures(folder.path()), file.packages);
        std::fs::write(folder.path().join(runtime::STOP_FAILURES_FILE), b"{").unwrap();
        assert!(load_stop_failures(folder.path()).is_empty(), "an unreadable file is logged and read as none");
    }

    #[test]
    fn a_watchdog_that_cannot_time_out_within_the_stop_budget_is_not_announced() {
        let watchdog = FakeWatchdog::new();
        watchdog.set_shortest_timeout(Duration::from_secs(1));
        let default_budget = Settings::default().stop_budget();
        assert_eq!(default_budget, Duration::from_millis(500));
        let refused = watchdog_usability(&watchdog, default_budget, None).unwrap_err();
        assert!(refused.contains("cannot time out within the stop budget of 500ms"), "{refused}");
        assert!(refused.contains("shortest timeout is 1s"), "{refused}");
        assert_eq!(watchdog_usability(&watchdog, Duration::from_secs(1), None), Ok("fake watchdog".to_owned()));
        let failed = watchdog_usability(&watchdog, Duration::from_secs(2), Some("granted 60s")).unwrap_err();
        assert_eq!(failed, "watchdog fake watchdog could not be armed: granted 60s");
    }
}
