//! The executor: one worker per package reconciles what this node owns with what runs here.
//!
//! ```text
//!  every change of the applied state, and every 50 ms:
//!    first time: probe every resource; adopt a package this node owns (no restart), stop one it does not
//!    owner = me, phase starting/running, lease valid  ──> keep it running (start if needed, monitor)
//!    anything else while active (not owner, stopping, lease at its stop budget) ──> stop it
//!    owner = me, phase stopping, nothing active ──> report Stopped
//!  a start is aborted (and the package stopped) if the lease reaches its stop budget meanwhile
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use cluster_agents::{MonitorState, PackageRunner, RunError};
use cluster_model::{Command, PackageState, Phase, Report, ResourceStatus};
use cluster_package::PackageDef;

use super::leases::{lease_lapse, must_stop_now};
use super::{now, wall_ms, Engine, Snapshot};

const TICK: Duration = Duration::from_millis(50);

/// Starts a worker for every package that appears in the state.
pub(crate) async fn supervise(engine: Arc<Engine>) {
    let mut workers: BTreeMap<String, tokio::task::JoinHandle<()>> = BTreeMap::new();
    let mut updates = engine.snapshot.subscribe();
    loop {
        let names: BTreeSet<String> = updates.borrow_and_update().state.packages.keys().cloned().collect();
        workers.retain(|_, handle| !handle.is_finished());
        for name in names {
            if let std::collections::btree_map::Entry::Vacant(slot) = workers.entry(name.clone()) {
                slot.insert(tokio::spawn(Worker::new(engine.clone(), name).run()));
            }
        }
        if updates.changed().await.is_err() {
            return;
        }
    }
}

struct Worker {
    engine: Arc<Engine>,
    name: String,
    runner: Option<(PackageDef, PackageRunner)>,
    /// Resources may be active here, started (or adopted) at this epoch.
    active: Option<u64>,
    probed: bool,
    next_monitor: BTreeMap<String, Duration>,
}

impl Worker {
    fn new(engine: Arc<Engine>, name: String) -> Worker {
        Worker { engine, name, runner: None, active: None, probed: false, next_monitor: BTreeMap::new() }
    }

    async fn run(mut self) {
        let mut updates = self.engine.snapshot.subscribe();
        loop {
            let snapshot = updates.borrow_and_update().clone();
            match snapshot.state.packages.get(&self.name).cloned() {
                Some(package) => self.reconcile(&snapshot, &package).await,
                None => {
                    if let Some(epoch) = self.active {
                        // A failed stop leaves `active` set: the next round tries again.
                        let _ = self.stop(epoch, "package removed").await;
                    }
                    if self.active.is_none() {
                        return;
                    }
                }
            }
            tokio::select! {
                _ = updates.changed() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// The runner of the current definition; a changed definition takes effect once the package
    /// is no longer active here (the old runner stops what the old definition started).
    fn runner(&mut self, def: &PackageDef) -> &PackageRunner {
        let outdated = self.runner.as_ref().is_none_or(|(current, _)| current != def);
        if self.runner.is_none() || (outdated && self.active.is_none()) {
            self.runner = Some((def.clone(), PackageRunner::new(def, &self.engine.host, &self.engine.agents)));
        }
        &self.runner.as_ref().expect("runner").1
    }

    async fn report(&self, package: &PackageState, report: Report) {
        let command = Command::Report {
            package: self.name.clone(),
            node: self.engine.me.clone(),
            epoch: package.epoch,
            report,
            at_ms: wall_ms(),
        };
        if let Err(err) = self.engine.propose(command).await {
            tracing::warn!(package = %self.name, error = %err, "report not committed, will retry");
        }
    }

    async fn reconcile(&mut self, snapshot: &Snapshot, package: &PackageState) {
        let settings = &snapshot.state.settings;
        let me = self.engine.me.clone();
        let holder = *self.engine.holder.lock().expect("lease lock");
        // Nothing is decided before this node holds a lease on a state at least as recent as the
        // grant: an old or partial state must not make it start or stop anything.
        if !holder.may_start(now(), snapshot.applied, settings) && !self.probed {
            return;
        }
        if !self.probed {
            self.probe(package).await;
            self.probed = true;
        }
        if package.frozen {
            return;
        }
        let mine = package.owner.as_deref() == Some(me.as_str());
        let keep =
            mine && matches!(package.phase, Phase::Starting | Phase::Running) && !must_stop_now(&self.engine, settings);
        match self.active {
            Some(epoch) if !keep || epoch != package.epoch || self.definition_changed(&package.def) => {
                let why = if must_stop_now(&self.engine, settings) {
                    "lease at its stop budget"
                } else if !mine {
                    "not the owner"
                } else {
                    "stop requested"
                };
                let stopped = self.stop(epoch, why).await;
                if mine && package.phase == Phase::Stopping {
                    match stopped {
                        Ok(()) => self.report(package, Report::Stopped).await,
                        Err(reason) => self.report(package, Report::StopFailed { reason }).await,
                    }
                }
            }
            Some(_) => {
                if package.phase == Phase::Starting {
                    self.report(package, Report::Running { resources: self.resource_states(package) }).await;
                }
                self.monitor(package).await;
            }
            None if mine && package.phase == Phase::Stopping => self.report(package, Report::Stopped).await,
            None if mine && package.phase == Phase::Running && holder.may_start(now(), snapshot.applied, settings) => {
                // Running in the state but not here (e.g. not found after a daemon restart).
                let report =
                    Report::ResourceFailed { resource: "package".into(), reason: format!("not running on {me}") };
                self.report(package, report).await;
            }
            None if mine && package.phase == Phase::Starting && holder.may_start(now(), snapshot.applied, settings) => {
                self.start(package, settings).await
            }
            None => {}
        }
    }

    fn definition_changed(&self, def: &PackageDef) -> bool {
        self.runner.as_ref().is_some_and(|(current, _)| current != def)
    }

    fn resource_states(&self, package: &PackageState) -> Vec<ResourceStatus> {
        package.def.resources.iter().map(|r| ResourceStatus { name: r.name.clone(), state: "running".into() }).collect()
    }

    /// First look after the daemon starts: adopt what runs correctly and is ours, stop the rest.
    async fn probe(&mut self, package: &PackageState) {
        let epoch = package.epoch;
        let results = self.runner(&package.def).probe(epoch).await;
        let running = results.iter().filter(|r| matches!(r.state, Ok(MonitorState::Running))).count();
        let mine = package.owner.as_deref() == Some(self.engine.me.as_str());
        if running == 0 && results.iter().all(|r| r.state.is_ok()) {
            return;
        }
        if running == results.len() && mine && matches!(package.phase, Phase::Starting | Phase::Running) {
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

    async fn start(&mut self, package: &PackageState, settings: &cluster_model::Settings) {
        let epoch = package.epoch;
        self.engine.set_active(&self.name, true);
        self.engine.tend_watchdog_now();
        self.active = Some(epoch);
        tracing::info!(package = %self.name, epoch, "starting");
        let engine = self.engine.clone();
        let runner = self.runner(&package.def);
        let outcome = tokio::select! {
            outcome = runner.start(epoch) => Some(outcome),
            _ = lease_lapse(&engine, settings) => None,
        };
        match outcome {
            Some(Ok(_)) => {
                self.schedule_monitors(package);
                self.report(package, Report::Running { resources: self.resource_states(package) }).await;
            }
            None => {
                tracing::warn!(package = %self.name, epoch, "lease reached its stop budget during the start: stopping");
                let _ = self.stop(epoch, "lease at its stop budget").await;
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
            }
        }
    }

    /// Stops every resource; on success nothing is active here any more.
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
        let due: Vec<(String, Duration)> = package
            .def
            .resources
            .iter()
            .filter(|r| self.next_monitor.get(&r.name).is_some_and(|next| *next <= at))
            .map(|r| (r.name.clone(), r.monitor.interval))
            .collect();
        for (resource, interval) in due {
            self.next_monitor.insert(resource.clone(), at + interval);
            let runner = &self.runner.as_ref().expect("runner of an active package").1;
            let failure = match runner.monitor(&resource, epoch).await {
                Ok(MonitorState::Running) => continue,
                Ok(MonitorState::NotRunning) => "not running".to_owned(),
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
