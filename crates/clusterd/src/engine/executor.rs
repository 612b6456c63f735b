//! The executor: one worker per package reconciles what this node owns with what runs here.
//!
//! ```text
//!  supervise: every applied entry ──> compare each package with what its worker last got
//!               changed package ──> its worker's channel        settings ──> lease watch
//!               applied index ──> published last (a worker that sees it also sees its package at that index)
//!  lease watch: sleeps until the instant the lease reaches its stop budget (polls every 10 ms while there
//!               is no valid lease, to see a renewal) and publishes "must stop" when it flips
//!
//!  a worker runs only when woken by: its package changed │ must-stop flipped (while something is active here,
//!  or while waiting to start) │ the applied index moved (only while waiting for a state as recent as the
//!  lease grant) │ its earliest monitor is due │ a retry (a report not committed, a stop that failed)
//!
//!    first time: probe every resource; adopt a package this node owns (no restart), stop one it does not
//!    owner = me, phase starting/running, lease valid  ──> keep it running (start if needed, monitor)
//!    anything else while active (not owner, stopping, lease at its stop budget) ──> stop it
//!    owner = me, phase stopping, nothing active ──> report Stopped
//!  a start is aborted (and the package stopped) if the lease reaches its stop budget meanwhile
//!  a dependent starts only once what it depends on runs here (same-node: its worker here runs it and
//!  reported it running) or where it must by the applied state (any-node, different-node)
//!  promotable, running here: promote while the state says promoting/primary (report Promoted), demote
//!  while it says replica/demoting (report Demoted); a stop demotes first; the agents' promotion
//!  score is reported when it changes
//! ```
//!
//! An idle node therefore does no work per package apart from the monitors it runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use cluster_agents::{PackageRunner, RunError};
use cluster_model::{ClusterState, Command, LeaseStatus, PackageState, Phase, Report, ResourceStatus, Role, Settings};
use cluster_package::PackageDef;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::leases::{lease_lapse, must_stop_now};
use super::{now, wall_ms, Engine};

/// Wait before trying again after a report that was not committed or a stop that failed.
const RETRY: Duration = Duration::from_millis(250);
/// How often the lease watch looks for a renewal while this node has no valid lease.
const LEASE_POLL: Duration = Duration::from_millis(10);
/// How often `supervise` looks for workers that ended while their package still exists.
const REAP: Duration = Duration::from_secs(1);

/// What a worker gets: its package as last applied here, `None` once it was removed.
type PackageSlot = Option<Arc<PackageState>>;

struct WorkerHandle {
    slot: watch::Sender<PackageSlot>,
    task: JoinHandle<()>,
}

fn spawn_worker(engine: &Arc<Engine>, name: &str, package: PackageSlot) -> WorkerHandle {
    let (slot, updates) = watch::channel(package);
    let task = tokio::spawn(Worker::new(engine.clone(), name.to_owned(), updates).run());
    WorkerHandle { slot, task }
}

/// Starts a worker for every package that appears in the state and hands each worker its package
/// whenever an applied entry changed it.
pub(crate) async fn supervise(engine: Arc<Engine>) {
    let mut workers: BTreeMap<String, WorkerHandle> = BTreeMap::new();
    let mut last = None;
    let mut next_event = None;
    loop {
        let applied = match last {
            None => engine.node.applied_index(),
            Some(index) => engine.node.wait_applied_after(index, REAP).await,
        };
        if last != Some(applied) {
            if last.is_none() {
                // A restarted daemon counts the packages its predecessor may have run as active until
                // their workers probe them; one that no longer exists has no worker.
                let known = engine.node.read_local(|state| state.packages.keys().cloned().collect::<BTreeSet<_>>());
                engine.active.lock().expect("active lock").retain(|name| known.contains(name));
            }
            next_event = Some(publish(&engine, &mut workers, applied, next_event));
            last = Some(applied);
        }
        // A worker ends once its package is gone and nothing is active; one that ended while its
        // package exists again (removed and re-applied meanwhile, or a panic) is replaced.
        workers.retain(|_, worker| !worker.task.is_finished() || worker.slot.borrow().is_some());
        for (name, worker) in workers.iter_mut() {
            if worker.task.is_finished() {
                let package = worker.slot.borrow().clone();
                *worker = spawn_worker(&engine, name, package);
            }
        }
    }
}

/// One pass over the applied state: settings, each package that changed, then the applied index.
/// `seen_events` is the state's `next_event` at the previous pass; returns the current one.
///
/// Comparing whole definitions of every package on every applied entry was the executor's main cost at
/// 1,000 packages, so a definition is compared only for packages named by an event since the previous
/// pass: a definition changes only through `pkg apply`, which always records an event naming the
/// package. When the retained history does not reach back to the previous pass, everything is compared.
fn publish(
    engine: &Arc<Engine>,
    workers: &mut BTreeMap<String, WorkerHandle>,
    applied: u64,
    seen_events: Option<u64>,
) -> u64 {
    let mut new = Vec::new();
    let next_event = engine.node.read_local(|state| {
        engine.settings.send_if_modified(|current| {
            let changed = **current != state.settings;
            if changed {
                *current = Arc::new(state.settings.clone());
            }
            changed
        });
        let named = seen_events.and_then(|seen| packages_named_since(state, seen));
        for (name, package) in &state.packages {
            match workers.get(name) {
                Some(worker) => {
                    let compare_definition = named.as_ref().is_none_or(|named| named.contains(name.as_str()));
                    worker.slot.send_if_modified(|slot| {
                        let same = slot.as_deref().is_some_and(|current| {
                            same_except_definition(current, package)
                                && (!compare_definition || current.def == package.def)
                        });
                        if !same {
                            *slot = Some(Arc::new(package.clone()));
                        }
                        !same
                    });
                }
                None => new.push((name.clone(), Arc::new(package.clone()))),
            }
        }
        for (name, worker) in workers.iter() {
            if !state.packages.contains_key(name) {
                worker.slot.send_if_modified(|slot| slot.take().is_some());
            }
        }
        state.next_event
    });
    engine.applied.send_replace(applied);
    for (name, package) in new {
        let worker = spawn_worker(engine, &name, Some(package));
        workers.insert(name, worker);
    }
    next_event
}

/// Packages named by the events recorded since `next_event` was `seen`; `None` when the retained
/// history does not reach back that far.
fn packages_named_since(state: &ClusterState, seen: u64) -> Option<BTreeSet<&str>> {
    let covered = match state.events.front() {
        Some(oldest) => oldest.seq <= seen && seen <= state.next_event,
        None => seen == state.next_event,
    };
    covered.then(|| {
        state
            .events
            .iter()
            .rev()
            .take_while(|event| event.seq >= seen)
            .filter_map(|event| event.package.as_deref())
            .collect()
    })
}

/// Every field but the definition is equal (the destructuring fails to compile when a field is added).
fn same_except_definition(a: &PackageState, b: &PackageState) -> bool {
    let PackageState {
        def: _,
        desired,
        frozen,
        owner,
        epoch,
        phase,
        since_ms,
        target,
        stopping_after_failure,
        failures,
        banned,
        restarts,
        last_failure,
        resources,
        blocked_reason,
        role,
        score,
        retired,
        instance,
    } = a;
    *epoch == b.epoch
        && *phase == b.phase
        && *since_ms == b.since_ms
        && *desired == b.desired
        && *frozen == b.frozen
        && *restarts == b.restarts
        && *stopping_after_failure == b.stopping_after_failure
        && *owner == b.owner
        && *target == b.target
        && *resources == b.resources
        && *last_failure == b.last_failure
        && *blocked_reason == b.blocked_reason
        && *failures == b.failures
        && *banned == b.banned
        && *role == b.role
        && *score == b.score
        && *retired == b.retired
        && *instance == b.instance
}

/// Publishes whether this node's lease is at its stop budget (or absent), the moment it flips: it
/// sleeps until the instant the stop budget is reached (a renewal only moves that instant later, so
/// waking at the old one and looking again is enough), and polls every 10 ms while there is no
/// valid lease, to see a renewal.
pub(crate) async fn watch_lease(engine: Arc<Engine>) {
    let mut settings_updates = engine.settings.subscribe();
    loop {
        let settings = settings_updates.borrow_and_update().clone();
        let holder = *engine.holder.lock().expect("lease lock");
        let at = now();
        let must_stop = holder.status(at, &settings) == LeaseStatus::MustStop;
        let flipped = engine.must_stop.send_if_modified(|current| {
            let changed = *current != must_stop;
            *current = must_stop;
            changed
        });
        match (flipped, must_stop) {
            (true, true) => tracing::warn!("lease at its stop budget: stopping every package"),
            (true, false) => tracing::info!("lease valid: packages may start"),
            (false, _) => {}
        }
        // Timers run on the monotonic clock, which stops during a suspend while the lease clock
        // does not: `leases::heartbeat_loop` looks at every heartbeat and wakes this watch when
        // the lease ran out before the instant it sleeps to (an idle node does not wake here at
        // every heartbeat).
        let wait = if must_stop {
            LEASE_POLL
        } else {
            holder.remaining(at).unwrap_or_default().saturating_sub(settings.stop_budget())
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = engine.lease_changed.notified() => {}
            changed = settings_updates.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// What a worker waits for after a round, besides a change of its package.
#[derive(Debug, Default)]
struct Wait {
    /// Wake at this time (the earliest monitor).
    at: Option<Duration>,
    /// Blocked until this node may start: wake on lease and applied-index changes.
    may_start: bool,
    /// Run another round at once (something was stopped that this node still owns).
    again: bool,
}

struct Worker {
    engine: Arc<Engine>,
    name: String,
    /// The package as applied here (`None` once removed).
    updates: watch::Receiver<PackageSlot>,
    /// Whether this node's lease is at its stop budget (`Engine::must_stop`).
    lease_updates: watch::Receiver<bool>,
    /// The index up to which every worker has its package (`Engine::applied`).
    applied_updates: watch::Receiver<u64>,
    /// A wait of this round ended early (the package changed, or the lease reached its stop
    /// budget): the round is cut short and another one runs at once, on the new state.
    interrupted: bool,
    /// The agents of the package, while it may be active here (and for the probe): every node
    /// has a worker for every package of the cluster, and a runner is the largest part of one.
    runner: Option<(Arc<PackageDef>, Arc<PackageRunner>)>,
    /// The highest epoch a runner of this worker saw, handed to the next runner: an older epoch
    /// is refused even after the runner was dropped.
    epoch_seen: u64,
    /// Resources may be active here, started (or adopted) at this epoch.
    active: Option<u64>,
    probed: bool,
    next_monitor: BTreeMap<String, Duration>,
    /// Try again at this time: a report was not committed or a stop failed.
    retry_at: Option<Duration>,
    /// The package was stopped here at this epoch because the lease reached its stop budget while
    /// this node still owned it: once the lease is back it restarts without counting a failure.
    stopped_for_lease: Option<u64>,
    /// The epoch at which this worker reported a failed stop: it never starts the package again at
    /// that epoch. The report blocks the package there once committed, and only a cleanup or a
    /// fence frees it, both away from this node at that epoch; a start from a state older than the
    /// report would race an operator who stopped the resources by hand and cleaned the package up
    /// (docs/safety.md, rule 8).
    stop_failed_at: Option<u64>,
}

/// How a wait of a worker ended.
enum Waited<T> {
    Done(T),
    /// The package changed meanwhile, or the lease reached its stop budget.
    Interrupted,
}

impl Worker {
    fn new(engine: Arc<Engine>, name: String, updates: watch::Receiver<PackageSlot>) -> Worker {
        let lease_updates = engine.must_stop.subscribe();
        let applied_updates = engine.applied.subscribe();
        let stop_failed_at = engine.stop_failure_of(&name);
        Worker {
            engine,
            name,
            updates,
            lease_updates,
            applied_updates,
            interrupted: false,
            runner: None,
            epoch_seen: 0,
            active: None,
            probed: false,
            next_monitor: BTreeMap::new(),
            retry_at: None,
            stopped_for_lease: None,
            stop_failed_at,
        }
    }

    async fn run(mut self) {
        loop {
            // The applied index first: the package is then at least as recent as that index.
            let applied = *self.applied_updates.borrow_and_update();
            let package = self.updates.borrow_and_update().clone();
            self.lease_updates.borrow_and_update();
            self.retry_at = None;
            self.interrupted = false;
            let wait = match package {
                // Boxed: reconciling is a large future, and inline it would be part of every idle
                // worker's task; every node has a worker per package of the cluster.
                Some(package) => Box::pin(self.reconcile(&package, applied)).await,
                None => {
                    if let Some(epoch) = self.active {
                        // A failed stop leaves `active` set and a retry scheduled.
                        let _ = Box::pin(self.stop(epoch, "package removed")).await;
                    }
                    if self.active.is_none() {
                        return;
                    }
                    Wait::default()
                }
            };
            if self.probed && self.active.is_none() {
                self.drop_runner();
            }
            if wait.again || self.interrupted {
                continue;
            }
            let deadline = [wait.at, self.retry_at].into_iter().flatten().min();
            let sleep = deadline.map_or(Duration::from_secs(3600), |at| at.saturating_sub(now()));
            let lease_matters = self.active.is_some() || wait.may_start;
            tokio::select! {
                changed = self.updates.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                changed = self.lease_updates.changed(), if lease_matters => {
                    if changed.is_err() {
                        return;
                    }
                }
                changed = self.applied_updates.changed(), if wait.may_start => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep(sleep), if deadline.is_some() => {}
            }
        }
    }

    /// The runner of the current definition. A definition whose resources changed gets a new
    /// runner once the package is no longer active here (the old runner stops what the old
    /// definition started; see `redefine`); a change of placement or policy only keeps the runner.
    fn runner(&mut self, def: &Arc<PackageDef>) -> Arc<PackageRunner> {
        match &mut self.runner {
            Some((current, _)) if current == def => {}
            Some((current, _)) if current.first_redefined_resource(def).is_none() => *current = Arc::clone(def),
            Some(_) if self.active.is_some() => {}
            _ => self.replace_runner(def),
        }
        self.runner.as_ref().expect("runner").1.clone()
    }

    fn replace_runner(&mut self, def: &Arc<PackageDef>) {
        self.drop_runner();
        let runner = PackageRunner::for_instance(def, &self.name, &self.engine.host, &self.engine.agents);
        runner.see_epoch(self.epoch_seen);
        self.runner = Some((Arc::clone(def), Arc::new(runner)));
    }

    /// Drops the runner (nothing is active here), keeping the highest epoch it saw.
    fn drop_runner(&mut self) {
        if let Some((_, runner)) = self.runner.take() {
            self.epoch_seen = self.epoch_seen.max(runner.epoch_seen());
        }
    }

    fn retry_soon(&mut self) {
        self.retry_at = Some(now() + RETRY);
    }

    /// Waits for `work` (a report's answer, a monitor, a probe), but not past a change of the
    /// package nor, while something may be active here, past the lease reaching its stop budget:
    /// a worker runs one await at a time, and one that sat out a 5 s proposal or a hung monitor
    /// kept its package running after its lease lapsed (issue 11, finding 3). Dropping `work` is
    /// harmless: a proposal commits or not (the next round sees which), and an agent action's
    /// process group is killed when its future is dropped.
    async fn interruptible<T>(&mut self, work: impl std::future::Future<Output = T>) -> Waited<T> {
        let watch_lease = self.active.is_some();
        self.interruptible_by(work, watch_lease).await
    }

    /// [`Worker::interruptible`], by the lease only when `watch_lease`.
    async fn interruptible_by<T>(
        &mut self,
        work: impl std::future::Future<Output = T>,
        watch_lease: bool,
    ) -> Waited<T> {
        let updates = &mut self.updates;
        let lease_updates = &mut self.lease_updates;
        let outcome = tokio::select! {
            biased;
            _ = lease_updates.wait_for(|must_stop| *must_stop), if watch_lease => None,
            _ = updates.changed() => None,
            done = work => Some(done),
        };
        match outcome {
            Some(done) => Waited::Done(done),
            None => {
                self.interrupted = true;
                Waited::Interrupted
            }
        }
    }

    async fn report(&mut self, package: &PackageState, report: Report) {
        let stop_failed = matches!(report, Report::StopFailed { .. });
        if stop_failed {
            self.stop_failed_at = Some(package.epoch);
            self.engine.record_stop_failure(&self.name, package.epoch);
        }
        let command = Command::Report {
            package: self.name.clone(),
            node: self.engine.me.clone(),
            epoch: package.epoch,
            report,
            at_ms: wall_ms(),
        };
        // A failed stop is reported whatever the lease: it blocks the package (a lease-only node's
        // expiry must not free it), and the lease reaching its stop budget changes nothing here.
        let watch_lease = self.active.is_some() && !stop_failed;
        let engine = self.engine.clone();
        match self.interruptible_by(engine.propose(command), watch_lease).await {
            Waited::Done(Ok(_)) => {}
            Waited::Done(Err(err)) => {
                tracing::warn!(package = %self.name, error = %err, "report not committed, will retry");
                self.retry_soon();
            }
            Waited::Interrupted => {
                tracing::debug!(package = %self.name, "report not waited for: the package or the lease changed")
            }
        }
    }

    async fn reconcile(&mut self, package: &PackageState, applied: u64) -> Wait {
        let settings = self.engine.settings();
        let settings = settings.as_ref();
        let me = self.engine.me.clone();
        let holder = *self.engine.holder.lock().expect("lease lock");
        let mut wait = Wait::default();
        // Nothing is decided before this node holds a lease: a grant on a state at least as recent
        // as the grant (an old or partial state must not make it start anything), or the lease of
        // the daemon this one replaces, which lets it probe and adopt what runs (keep-only: while it
        // runs, no package moves away from this node without its own report).
        let may_start = holder.may_start(now(), applied, settings);
        let lease_valid = holder.status(now(), settings) == LeaseStatus::Valid;
        if !may_start && !lease_valid && !self.probed {
            wait.may_start = true;
            return wait;
        }
        if !self.probed {
            self.probe(package).await;
            if !self.probed {
                return wait;
            }
        }
        let mine = package.owner.as_deref() == Some(me.as_str());
        let lease_lapsed = must_stop_now(&self.engine, settings);
        if package.frozen {
            // Nothing is started, stopped or monitored, except that the lease outranks the freeze:
            // at its stop budget the node stops what it runs, frozen or not, since nothing else
            // would once the majority reassigns it (issue 11, finding 4). It restarts after the
            // unfreeze if the node still owns it.
            if let (Some(epoch), true) = (self.active, lease_lapsed) {
                tracing::warn!(package = %self.name, epoch, "frozen, but the lease reached its stop budget: stopping");
                if self.stop(epoch, "lease at its stop budget (frozen package)").await.is_ok()
                    && mine
                    && epoch == package.epoch
                {
                    self.stopped_for_lease = Some(epoch);
                }
            }
            return wait;
        }
        let keep = mine && matches!(package.phase, Phase::Starting | Phase::Running) && !lease_lapsed;
        if self.stopped_for_lease.is_some_and(|epoch| epoch != package.epoch || !mine) {
            self.stopped_for_lease = None;
        }
        let redefined = self.redefined_from(&package.def);
        match self.active {
            Some(epoch) if !keep || epoch != package.epoch => {
                let why = if lease_lapsed {
                    "lease at its stop budget"
                } else if !mine {
                    "not the owner"
                } else {
                    "stop requested"
                };
                let stopped = self.stop(epoch, why).await;
                // Stopped something this node still owns (lease lapse or new epoch): look again at
                // once, to start it or to wait for the lease.
                let owned = mine && matches!(package.phase, Phase::Starting | Phase::Running);
                wait.again = stopped.is_ok() && owned;
                if stopped.is_ok() && owned && lease_lapsed && epoch == package.epoch {
                    self.stopped_for_lease = Some(epoch);
                }
                if mine && package.phase == Phase::Stopping {
                    match stopped {
                        Ok(()) => self.report(package, Report::Stopped).await,
                        Err(reason) => self.report(package, Report::StopFailed { reason }).await,
                    }
                }
            }
            Some(epoch) if redefined.is_some() => {
                let first = redefined.expect("a redefined resource");
                if self.redefine(package, epoch, first, settings).await {
                    wait.again = true;
                } else if self.active.is_some() {
                    wait.at = self.next_monitor.values().min().copied();
                }
            }
            Some(_) => {
                if package.phase == Phase::Starting {
                    self.report(package, Report::Running { resources: self.resource_states(package) }).await;
                } else if package.def.promotable.is_some() && self.reconcile_role(package, settings).await {
                    wait.again = true;
                    return wait;
                }
                self.monitor(package).await;
                self.report_score(package).await;
                if self.active.is_some() {
                    wait.at = self.next_monitor.values().min().copied();
                }
            }
            None if mine && matches!(package.phase, Phase::Starting | Phase::Running) && !may_start => {
                wait.may_start = true;
            }
            None if mine && package.phase == Phase::Stopping => self.report(package, Report::Stopped).await,
            None if mine && package.phase == Phase::Running && self.stopped_for_lease == Some(package.epoch) => {
                let reason = format!(
                    "lease of {me} reached its stop budget, so {me} stopped the package; the lease is back: restarting"
                );
                self.report(package, Report::Restarting { reason }).await;
            }
            None if mine && package.phase == Phase::Running => {
                // Running in the state but not here (e.g. not found after a daemon restart).
                let report =
                    Report::ResourceFailed { resource: "package".into(), reason: format!("not running on {me}") };
                self.report(package, report).await;
            }
            None if mine && package.phase == Phase::Starting && self.stop_failed_at == Some(package.epoch) => {
                tracing::warn!(
                    package = %self.name,
                    epoch = package.epoch,
                    "not started: its stop failed at this epoch (blocked until `clusterctl pkg cleanup` or a fence)"
                );
            }
            None if mine && package.phase == Phase::Starting && !self.dependencies_ready(package) => {
                // Woken again by the applied entry that says what it needs runs (its worker here
                // reports it running only once it started it).
                wait.may_start = true;
            }
            None if mine && package.phase == Phase::Starting => {
                if self.start(package, settings).await {
                    wait.again = true;
                } else if self.active.is_some() {
                    wait.at = self.next_monitor.values().min().copied();
                }
            }
            None => {}
        }
        wait
    }

    /// The first resource that `def` defines differently from the runner's definition, if any.
    fn redefined_from(&self, def: &PackageDef) -> Option<usize> {
        self.runner.as_ref().and_then(|(current, _)| current.first_redefined_resource(def))
    }

    /// `pkg apply` redefined resources of a package active here (the replicated phase is then
    /// `starting`, same owner and epoch): the old runner stops the first redefined resource and
    /// every later one, in reverse; the new runner then starts the package, which finds the
    /// unchanged resources before it running (starts are idempotent) and starts the rest. Returns
    /// true when the start was aborted at the stop budget (the caller looks again).
    async fn redefine(&mut self, package: &PackageState, epoch: u64, first: usize, settings: &Settings) -> bool {
        let (old, runner) = self.runner.as_ref().expect("runner of an active package");
        let from = old.resources.get(first).map_or("the new resources", |resource| resource.name.as_str());
        tracing::info!(package = %self.name, epoch, from, "resources redefined: restarting from this one");
        if let Err(err) = runner.stop_from(first, epoch).await {
            tracing::error!(package = %self.name, epoch, error = %err, "stop failed: resources may still be active");
            self.retry_soon();
            self.report(package, Report::StopFailed { reason: err.to_string() }).await;
            return false;
        }
        self.next_monitor.clear();
        self.replace_runner(&package.def);
        self.start(package, settings).await
    }

    fn resource_states(&self, package: &PackageState) -> Vec<ResourceStatus> {
        let promoted = self.runner.as_ref().is_some_and(|(_, runner)| runner.promoted());
        let state = |resource: &str| match (package.def.primary_only(resource), promoted) {
            (true, false) => "stopped (primary only)",
            _ => "running",
        };
        package
            .def
            .resources
            .iter()
            .map(|r| ResourceStatus { name: r.name.clone(), state: state(&r.name).into() })
            .collect()
    }

    /// Whether what `package` depends on runs where it must, for a start here: on this node, an
    /// instance this node runs (its worker started it: the state says `running`) and keeps active;
    /// elsewhere, by the applied state. After a lease lapse every package restarts at once: a
    /// dependent must not start before what it needs here (simulation: `no_local_dependency_guard`).
    fn dependencies_ready(&self, package: &PackageState) -> bool {
        if package.def.depends.is_empty() {
            return true;
        }
        let me = self.engine.me.as_str();
        let active = self.engine.active.lock().expect("active lock").clone();
        self.engine.node.read_local(|state| {
            package.def.depends.iter().all(|dependency| match dependency.location {
                cluster_package::Location::SameNode => state.instances(&dependency.package).any(|(key, other)| {
                    other.owner.as_deref() == Some(me) && other.phase == Phase::Running && active.contains(key)
                }),
                _ => cluster_model::relations::unmet_dependency(state, dependency, me).is_none(),
            })
        })
    }

    /// Promotes or demotes a package active here as its replicated role says (only while it runs
    /// here on a valid lease: the caller keeps it), and reports what it did. Returns true when the
    /// package was stopped (a failed promotion or demotion, or the lease at its stop budget meanwhile):
    /// the caller looks again.
    async fn reconcile_role(&mut self, package: &PackageState, settings: &Settings) -> bool {
        let Some((_, runner)) = &self.runner else { return false };
        let runner = runner.clone();
        let Some(epoch) = self.active else { return false };
        let want = package.role.wants_promoted() && package.phase == Phase::Running;
        let promoted = runner.promoted();
        if want == promoted {
            match package.role {
                Role::Promoting if promoted => self.report(package, Report::Promoted).await,
                Role::Demoting if !promoted => {
                    self.report(package, Report::Demoted { reason: "demoted".into() }).await;
                }
                _ => {}
            }
            return false;
        }
        let engine = self.engine.clone();
        let what = if want { "promoting" } else { "demoting" };
        tracing::info!(package = %self.name, epoch, "{what}");
        let outcome = tokio::select! {
            biased;
            _ = lease_lapse(&engine, settings) => None,
            outcome = async { if want { runner.promote(epoch).await } else { runner.demote(epoch).await } } => Some(outcome),
        };
        self.report_score(package).await;
        match outcome {
            Some(Ok(_)) if want => {
                // Its primary-only resources are monitored from now on.
                self.next_monitor.clear();
                if package.role == Role::Promoting {
                    self.report(package, Report::Promoted).await;
                }
                false
            }
            Some(Ok(_)) => {
                if package.role != Role::Replica {
                    self.report(package, Report::Demoted { reason: "demoted".into() }).await;
                }
                false
            }
            None => {
                tracing::warn!(package = %self.name, epoch, "lease reached its stop budget while {what}: stopping");
                self.stop(epoch, "lease at its stop budget").await.is_ok()
            }
            Some(Err(err)) => {
                // A failed promotion was undone (or not: then it may still be promoted), a failed
                // demotion leaves it possibly promoted: either way it stops here (demoted first),
                // and the restart budget decides what comes next; its role is freed only by its
                // own Demoted or Stopped report, or under the lease rules.
                tracing::warn!(package = %self.name, epoch, error = %err, "{what} failed: stopping");
                let resource = match &err {
                    RunError::StartFailed { failure, .. } => failure.resource.clone(),
                    RunError::StopFailed { failures, .. } => {
                        failures.first().map_or("package".to_owned(), |failure| failure.resource.clone())
                    }
                    _ => "package".to_owned(),
                };
                match self.stop(epoch, "promotion or demotion failed").await {
                    Ok(()) => {
                        let report = Report::ResourceFailed { resource, reason: format!("{what} failed: {err}") };
                        self.report(package, report).await;
                    }
                    Err(reason) => self.report(package, Report::StopFailed { reason }).await,
                }
                true
            }
        }
    }

    /// Reports the promotion score the agents set, when it differs from the replicated one.
    async fn report_score(&mut self, package: &PackageState) {
        let Some(promotable) = &package.def.promotable else { return };
        if promotable.promote.is_empty() || package.owner.as_deref() != Some(self.engine.me.as_str()) {
            return;
        }
        let score = match (&self.runner, self.active) {
            (Some((_, runner)), Some(_)) => runner.promotion_score(),
            _ => None,
        };
        if score != package.score && matches!(package.phase, Phase::Starting | Phase::Running) {
            self.report(package, Report::Score { score }).await;
        }
    }

    /// First look after the daemon starts: adopt what runs correctly and is ours, stop the rest.
    async fn probe(&mut self, package: &PackageState) {
        let epoch = package.epoch;
        let runner = self.runner(&package.def);
        let results = match self.interruptible_by(runner.probe(epoch), true).await {
            Waited::Done(results) => results,
            Waited::Interrupted if must_stop_now(&self.engine, &self.engine.settings()) => {
                // Cut short by the lease: whatever runs must stop, so count it as active.
                tracing::warn!(package = %self.name, "probe cut short by the lease's stop budget: stopping");
                self.engine.set_active(&self.name, true);
                self.active = Some(epoch);
                self.probed = true;
                return;
            }
            // The package changed: probe it again as it is now.
            Waited::Interrupted => return,
        };
        self.probed = true;
        let is_running = |result: &cluster_agents::ProbeResult| {
            matches!(
                result.state,
                Ok(cluster_agents::MonitorState::Running | cluster_agents::MonitorState::RunningPromoted)
            )
        };
        // Primary-only resources run on a promoted instance only: the rest decides the adoption
        // (a promoted instance the state does not want promoted is then demoted).
        let running = results.iter().filter(|r| !r.primary_only && is_running(r)).count();
        let started = results.iter().filter(|r| !r.primary_only).count();
        let mine = package.owner.as_deref() == Some(self.engine.me.as_str());
        if running == 0 && !results.iter().any(is_running) && results.iter().all(|r| r.state.is_ok()) {
            // (A restarted daemon counted it active until now: the previous one may have run it.)
            self.engine.set_active(&self.name, false);
            return;
        }
        if running == started && mine && matches!(package.phase, Phase::Starting | Phase::Running) {
            tracing::info!(package = %self.name, epoch, "adopted: every resource already runs here");
            self.engine.set_active(&self.name, true);
            self.engine.tend_watchdog_now();
            self.active = Some(epoch);
            return;
        }
        tracing::warn!(package = %self.name, running, total = results.len(), "found partly or wrongly running: stopping it");
        self.engine.set_active(&self.name, true);
        self.active = Some(epoch);
    }

    /// Starts the package; returns true when the start was aborted at the stop budget and the
    /// package stopped (the caller looks again, to wait for the lease).
    async fn start(&mut self, package: &PackageState, settings: &Settings) -> bool {
        let epoch = package.epoch;
        self.engine.set_active(&self.name, true);
        self.engine.tend_watchdog_now();
        self.active = Some(epoch);
        tracing::info!(package = %self.name, epoch, "starting");
        let engine = self.engine.clone();
        let runner = self.runner(&package.def);
        // The lease is looked at again now that the package counts as active: a pet of an idle
        // `nowayout` watchdog just before (see `tend_watchdog`) then never outlasts the lease of
        // a package that starts.
        let outcome = tokio::select! {
            biased;
            _ = lease_lapse(&engine, settings) => None,
            outcome = runner.start(epoch) => Some(outcome),
        };
        match outcome {
            Some(Ok(_)) => {
                self.schedule_monitors(package);
                self.report(package, Report::Running { resources: self.resource_states(package) }).await;
                false
            }
            None => {
                tracing::warn!(package = %self.name, epoch, "lease reached its stop budget during the start: stopping");
                self.stop(epoch, "lease at its stop budget").await.is_ok()
            }
            Some(Err(err)) => {
                tracing::warn!(package = %self.name, epoch, error = %err, "start failed");
                if err.leaves_resources_active() {
                    self.report(package, Report::StopFailed { reason: err.to_string() }).await;
                } else {
                    self.active = None;
                    self.engine.set_active(&self.name, false);
                    let resource = match &err {
                        RunError::StartFailed { failure, .. } => failure.resource.clone(),
                        _ => "package".into(),
                    };
                    self.report(package, Report::ResourceFailed { resource, reason: err.to_string() }).await;
                }
                false
            }
        }
    }

    /// Stops every resource; on success nothing is active here any more, on failure a retry is
    /// scheduled.
    async fn stop(&mut self, epoch: u64, why: &str) -> Result<(), String> {
        tracing::info!(package = %self.name, epoch, why, "stopping");
        let Some((_, runner)) = &self.runner else {
            self.active = None;
            self.engine.set_active(&self.name, false);
            return Ok(());
        };
        match runner.stop(epoch).await {
            Ok(_) => {
                self.active = None;
                self.next_monitor.clear();
                self.engine.set_active(&self.name, false);
                Ok(())
            }
            Err(err) => {
                tracing::error!(package = %self.name, epoch, error = %err, "stop failed: resources may still be active");
                self.retry_soon();
                Err(err.to_string())
            }
        }
    }

    fn schedule_monitors(&mut self, package: &PackageState) {
        let at = now();
        self.next_monitor = package.def.resources.iter().map(|r| (r.name.clone(), at + r.monitor.interval)).collect();
    }

    /// Runs the monitors that are due; a failure stops the package here and is reported, and the
    /// replicated restart budget decides between a local restart and a relocation.
    async fn monitor(&mut self, package: &PackageState) {
        if self.next_monitor.is_empty() {
            self.schedule_monitors(package);
        }
        let Some(epoch) = self.active else { return };
        let at = now();
        let runner = self.runner.as_ref().expect("runner of an active package").1.clone();
        let promoted = runner.promoted();
        let due: Vec<(String, Duration)> = package
            .def
            .resources
            .iter()
            .filter(|r| self.next_monitor.get(&r.name).is_some_and(|next| *next <= at))
            .filter(|r| runner.monitored(&r.name, promoted))
            .map(|r| (r.name.clone(), r.monitor.interval))
            .collect();
        for (resource, interval) in due {
            self.next_monitor.insert(resource.clone(), at + interval);
            let result = match self.interruptible(runner.monitor(&resource, epoch)).await {
                Waited::Done(result) => result,
                // Dropped (its agent's process group is killed); the next round acts on the change.
                Waited::Interrupted => return,
            };
            let failure = match result {
                Ok(state) => match runner.monitor_failure(&resource, state) {
                    None => continue,
                    Some(failure) => failure,
                },
                Err(err) => err.to_string(),
            };
            tracing::warn!(package = %self.name, %resource, %failure, "monitor failed");
            if let Err(reason) = self.stop(epoch, "resource failed").await {
                self.report(package, Report::StopFailed { reason }).await;
                return;
            }
            self.report(package, Report::ResourceFailed { resource, reason: failure }).await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(command: &str) -> PackageDef {
        let text = format!(
            "name = \"web\"\n\n[[resource]]\nname = \"main\"\ntype = \"process\"\ncommand = [\"/bin/{command}\"]\n"
        );
        cluster_package::parse_package("web.toml", &text).expect("valid package")
    }

    fn state_with_web() -> ClusterState {
        let mut state = ClusterState::default();
        state.apply(&Command::PkgApply { def: Arc::new(definition("true")), at_ms: 1 });
        state
    }

    #[test]
    fn a_definition_is_compared_only_for_packages_named_by_new_events() {
        let mut state = state_with_web();
        let seen = state.next_event;
        assert_eq!(packages_named_since(&state, seen), Some(BTreeSet::new()));
        state.apply(&Command::PkgApply { def: Arc::new(definition("false")), at_ms: 2 });
        assert_eq!(packages_named_since(&state, seen), Some(BTreeSet::from(["web"])));
        // The definition changed, nothing else did: only the full comparison sees it.
        let before = state_with_web().packages["web"].clone();
        let after = &state.packages["web"];
        assert!(same_except_definition(&before, after));
        assert_ne!(before.def, after.def);
    }

    #[test]
    fn everything_is_compared_when_the_history_no_longer_reaches_the_last_pass() {
        let mut state = state_with_web();
        let seen = state.next_event;
        for at_ms in 0..cluster_model::EVENT_HISTORY as u64 + 1 {
            state.apply(&Command::PkgFreeze { name: "web".into(), frozen: at_ms % 2 == 0, at_ms });
        }
        assert_eq!(packages_named_since(&state, seen), None);
        // A first pass, or a counter from another history, is never trusted either.
        assert_eq!(packages_named_since(&state, state.next_event + 1), None);
    }

    #[test]
    fn any_other_field_counts_as_a_change() {
        let state = state_with_web();
        let package = &state.packages["web"];
        let mut moved = package.clone();
        moved.owner = Some("n2".into());
        assert!(!same_except_definition(package, &moved));
        let mut frozen = package.clone();
        frozen.frozen = true;
        assert!(!same_except_definition(package, &frozen));
        assert!(same_except_definition(package, &package.clone()));
    }
}
