//! The failover engine of one node: lease renewals and the watchdog (`leases.rs`), the controller
//! on the leader (`controller.rs`), and the executor that runs this node's packages (`executor.rs`).
//!
//! ```text
//!   replicated state ──(applied)──┬──> executor::supervise ──changed package──> its worker (one per package)
//!                                 └──> Snapshot (built on demand) ──> controller (leader only) ──> Assign / Fence
//!   heartbeat loop ── Lease RPC ──> leader: confirm quorum, LeaseTable.renewed ──grant──> LeaseHolder
//!   LeaseHolder ──> lease watch (must stop: at the stop budget) ──> workers; watchdog (pet only while Valid)
//! ```
//! The protocol and its safety argument: docs/safety.md.

mod controller;
mod executor;
mod leases;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cluster_agents::AgentOptions;
use cluster_api::PeerRpc;
use cluster_host::Fencer;
use cluster_host::Host;
use cluster_host::Watchdog;
use cluster_model::{ClusterState, Command, CommandOutcome, LeaseHolder, LeaseTable, Settings};
use cluster_raft::{ConsensusError, ConsensusNode};
use tokio::sync::watch;

pub(crate) use leases::LeaseRequest;

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
}

/// Monotonic time of this process, as a duration since an arbitrary origin.
pub(crate) fn now() -> Duration {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed()
}

/// Wall clock in ms since the Unix epoch, for events only (never for safety decisions).
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Engine {
    pub(crate) fn new(
        node: Arc<ConsensusNode>,
        host: Host,
        agents: AgentOptions,
        watchdog: Option<Arc<dyn Watchdog>>,
        fencer: Arc<dyn Fencer>,
    ) -> Arc<Engine> {
        let me = node.me().name.clone();
        Arc::new(Engine {
            node,
            me,
            host,
            agents,
            holder: Mutex::new(LeaseHolder::default()),
            table: Mutex::new(LeaseTable::default()),
            watchdog,
            fencer,
            fencing: Mutex::new(BTreeSet::new()),
            active: Mutex::new(BTreeSet::new()),
            snapshot: Mutex::new(None),
            settings: watch::channel(Arc::new(Settings::default())).0,
            applied: watch::channel(0).0,
            must_stop: watch::channel(true).0,
        })
    }

    /// Starts the engine's tasks.
    pub(crate) fn start(self: &Arc<Self>) {
        tokio::spawn(executor::supervise(self.clone()));
        tokio::spawn(executor::watch_lease(self.clone()));
        tokio::spawn(leases::heartbeat_loop(self.clone()));
        tokio::spawn(controller::controller_loop(self.clone()));
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
                let answer: Result<CommandOutcome, String> =
                    self.node.call_peer(&leader.name, &leader.address, PeerRpc::Propose, &command, timeout).await?;
                answer
            }
            Err(err) => Err(err.to_string()),
        }
    }

    /// Serves a `Propose` peer RPC: only the leader proposes.
    pub(crate) async fn serve_propose(&self, command: Command) -> Result<CommandOutcome, String> {
        self.node.write(command).await.map_err(|err| err.to_string())
    }

    pub(crate) fn watchdog_device(&self) -> Option<String> {
        self.watchdog.as_ref().map(|watchdog| watchdog.describe())
    }

    fn set_active(&self, package: &str, active: bool) {
        let mut set = self.active.lock().expect("active lock");
        if active {
            set.insert(package.to_owned());
        } else {
            set.remove(package);
        }
    }

    fn any_active(&self) -> bool {
        !self.active.lock().expect("active lock").is_empty()
    }

    /// The controller's view and the lease of every node, for `status` and `pkg plan`.
    pub(crate) fn view(&self) -> cluster_model::controller::View {
        controller::current_view(self)
    }

    /// Remaining lease of this node.
    pub(crate) fn lease_remaining(&self) -> Option<Duration> {
        self.holder.lock().expect("lease lock").remaining(now())
    }
}
