//! The executor of every node and its watchdog: the rules by which a node starts, keeps and stops
//! the packages of its applied state, given its lease.
//!
//! ```text
//!  events in: heartbeat tick, grant, Append (newer state), lease check, start/stop done, resume
//!  for each package P of the applied state S (index a), at own time t:
//!    keep P active   iff S[P].owner = me ∧ phase ∈ {Starting, Running} ∧ epoch = started epoch
//!                        ∧ holder.status(t) = Valid              (otherwise: stop it)
//!    start P         iff the above ∧ not active ∧ holder.may_start(t, a)   (5–200 ms, active from
//!                        the first instant) then Report Running at that epoch
//!    stop done       → Report Stopped if still owner at that epoch in phase Stopping; a failed
//!                        stop stays active (Stuck) and reports StopFailed
//!    owner, Stopping, not active → Report Stopped
//!    owner, Running, not active, may_start → Report ResourceFailed (as clusterd's executor does;
//!                        with `resource_failures` off it starts again at that epoch instead), or
//!                        Report Restarting if it stopped it at that epoch when its lease lapsed
//!    monitor failure (nemesis, `resource_failures` on) → Report ResourceFailed; still active
//!  watchdog: armed while anything is active, petted only while status = Valid,
//!            timeout = stop_budget; expiry resets the node (everything inactive at once)
//! ```

use cluster_model::{Command, LeaseStatus, Phase, Report};
use rand::Rng;

use crate::node::{Activity, Power, Record};
use crate::sim::{ms, Event, OpOutcome, Sim};

/// Reports are resent after this long until the applied state shows them.
const REPORT_RETRY_MS: u64 = 300;

enum Step {
    Start { package: String, epoch: u64 },
    Stop { package: String },
    Report { package: String, epoch: u64, report: Report },
}

impl Sim {
    fn due(&self, last: Option<u64>) -> bool {
        last.is_none_or(|at| self.now >= at + ms(REPORT_RETRY_MS))
    }

    /// Reconciles what node `n` runs with its applied state and its lease.
    pub(crate) fn evaluate(&mut self, n: usize) {
        if !self.nodes[n].runs() {
            return;
        }
        let t = self.local(n);
        let node = &self.nodes[n];
        let settings = &node.state.settings;
        let status = node.holder.status(t, settings);
        let may_start = node.holder.may_start(t, node.applied as u64, settings);
        let me = node.name.as_str();
        let mut steps = Vec::new();
        let mut lapsed = Vec::new();
        for (name, package) in &node.state.packages {
            if package.frozen {
                continue;
            }
            let mine = package.owner.as_deref() == Some(me);
            let wanted = mine && matches!(package.phase, Phase::Starting | Phase::Running);
            match node.records.get(name) {
                None if mine
                    && may_start
                    && (package.phase == Phase::Starting
                        || (package.phase == Phase::Running && !self.config.resource_failures)) =>
                {
                    steps.push(Step::Start { package: name.clone(), epoch: package.epoch })
                }
                None if mine
                    && package.phase == Phase::Running
                    && may_start
                    && self.due(node.stopped_reported_us.get(name).copied()) =>
                {
                    // A stop at the stop budget is not a failure of the package (clusterd's executor).
                    let report = if node.stopped_for_lease.get(name) == Some(&package.epoch) {
                        Report::Restarting { reason: "lease back".into() }
                    } else {
                        Report::ResourceFailed { resource: "package".into(), reason: format!("not running on {me}") }
                    };
                    steps.push(Step::Report { package: name.clone(), epoch: package.epoch, report })
                }
                None if mine
                    && package.phase == Phase::Stopping
                    && self.due(node.stopped_reported_us.get(name).copied()) =>
                {
                    steps.push(Step::Report { package: name.clone(), epoch: package.epoch, report: Report::Stopped })
                }
                None => {}
                Some(record) => match record.activity {
                    Activity::Active => {
                        if !(wanted && status == LeaseStatus::Valid && record.epoch == package.epoch) {
                            if wanted && record.epoch == package.epoch {
                                lapsed.push((name.clone(), record.epoch));
                            }
                            steps.push(Step::Stop { package: name.clone() });
                        } else if package.phase == Phase::Starting && self.due(record.reported_us) {
                            steps.push(Step::Report {
                                package: name.clone(),
                                epoch: record.epoch,
                                report: Report::Running { resources: vec![] },
                            });
                        }
                    }
                    Activity::Stuck => {
                        if mine
                            && record.epoch == package.epoch
                            && package.phase != Phase::Blocked
                            && self.due(record.reported_us)
                        {
                            steps.push(Step::Report {
                                package: name.clone(),
                                epoch: record.epoch,
                                report: Report::StopFailed { reason: "stop failed (simulated)".into() },
                            });
                        }
                    }
                    Activity::Starting | Activity::Stopping => {}
                },
            }
        }
        // Anything active that the state no longer knows is stopped.
        for (name, record) in &node.records {
            if record.activity == Activity::Active && !node.state.packages.contains_key(name) {
                steps.push(Step::Stop { package: name.clone() });
            }
        }
        let node = &mut self.nodes[n];
        let state = &node.state;
        node.stopped_for_lease.retain(|name, epoch| state.packages.get(name).is_some_and(|p| p.epoch == *epoch));
        node.stopped_for_lease.extend(lapsed);
        for step in steps {
            match step {
                Step::Start { package, epoch } => self.start(n, package, epoch),
                Step::Stop { package } => self.stop(n, package),
                Step::Report { package, epoch, report } => self.report(n, package, epoch, report),
            }
        }
        self.tend_watchdog(n, status);
    }

    fn start(&mut self, n: usize, package: String, epoch: u64) {
        if let Err(detail) = self.epochs.on_start(&self.names[n], &package, epoch) {
            self.fail("start-epochs", detail);
        }
        self.stats.starts += 1;
        let op = self.next_op();
        let duration = self.rng.random_range(ms(5)..=ms(200));
        self.trace(|| format!("n{} starts {package} at epoch {epoch} ({} ms)", n + 1, duration / 1000));
        self.nodes[n].records.insert(
            package.clone(),
            Record {
                activity: Activity::Starting,
                epoch,
                op,
                stop_fails: false,
                since_us: self.now,
                reported_us: None,
            },
        );
        self.after(duration, Event::OpDone { node: n, package, op });
    }

    fn stop(&mut self, n: usize, package: String) {
        self.stats.stops += 1;
        let op = self.next_op();
        let duration = self.rng.random_range(ms(5)..=ms(100));
        let fails = self.stage == crate::sim::Stage::Faults
            && self.config.scenario.stop_failures()
            && self.rng.random_bool(self.config.stop_failure);
        self.trace(|| {
            format!("n{} stops {package} ({} ms{})", n + 1, duration / 1000, if fails { ", will fail" } else { "" })
        });
        let record = self.nodes[n].records.get_mut(&package).expect("stopping an active package");
        record.activity = Activity::Stopping;
        record.op = op;
        record.stop_fails = fails;
        self.after(duration, Event::OpDone { node: n, package, op });
    }

    fn next_op(&mut self) -> u64 {
        self.seq_op += 1;
        self.seq_op
    }

    fn report(&mut self, n: usize, package: String, epoch: u64, report: Report) {
        let now = self.now;
        match self.nodes[n].records.get_mut(&package) {
            Some(record) => record.reported_us = Some(now),
            None => {
                self.nodes[n].stopped_reported_us.insert(package.clone(), now);
            }
        }
        let command = Command::Report { package, node: self.names[n].clone(), epoch, report, at_ms: self.local_ms(n) };
        self.propose(n, command);
    }

    /// A start or stop ended: the ground truth changes now, even if `clusterd` is paused.
    pub(crate) fn on_op_done(&mut self, n: usize, package: String, op: u64) {
        let Some(record) = self.nodes[n].records.get_mut(&package) else {
            return;
        };
        if record.op != op {
            return;
        }
        let epoch = record.epoch;
        let outcome = match record.activity {
            Activity::Starting => {
                record.activity = Activity::Active;
                OpOutcome::Started
            }
            Activity::Stopping if record.stop_fails => {
                record.activity = Activity::Stuck;
                self.stats.failed_stops += 1;
                OpOutcome::StopFailed
            }
            Activity::Stopping => {
                self.nodes[n].records.remove(&package);
                OpOutcome::Stopped
            }
            Activity::Active | Activity::Stuck => return,
        };
        self.trace(|| format!("n{} {package}: {outcome:?}", n + 1));
        let node = &mut self.nodes[n];
        if node.power != Power::Up {
            return;
        }
        if node.paused.is_some() {
            let incarnation = node.incarnation;
            node.deferred.push(Event::OpReaction { node: n, incarnation, package, epoch, outcome });
            return;
        }
        self.react(n, &package, epoch, outcome);
    }

    /// The executor learns how an operation ended.
    pub(crate) fn react(&mut self, n: usize, package: &str, epoch: u64, outcome: OpOutcome) {
        let node = &self.nodes[n];
        let any_phase = self.config.report_stopped_in_any_phase;
        let owned = node
            .state
            .packages
            .get(package)
            .filter(|p| p.owner.as_deref() == Some(node.name.as_str()) && p.epoch == epoch);
        let report = owned.and_then(|p| match outcome {
            OpOutcome::Started => Some(Report::Running { resources: vec![] }),
            OpOutcome::Stopped if p.phase == Phase::Stopping || any_phase => Some(Report::Stopped),
            OpOutcome::Stopped => None,
            OpOutcome::StopFailed => Some(Report::StopFailed { reason: "stop failed (simulated)".into() }),
        });
        if let Some(report) = report {
            self.report(n, package.to_owned(), epoch, report);
        }
        self.evaluate(n);
    }

    /// A monitor of an active package failed on node `n` (the resources stay active).
    pub(crate) fn monitor_failure(&mut self, n: usize, package: String) {
        let node = &self.nodes[n];
        let Some(record) = node.records.get(&package) else {
            return;
        };
        if record.activity != Activity::Active || !node.runs() {
            return;
        }
        let epoch = record.epoch;
        let mine = node
            .state
            .packages
            .get(&package)
            .is_some_and(|p| p.owner.as_deref() == Some(node.name.as_str()) && p.epoch == epoch);
        if mine {
            self.trace(|| format!("n{} {package}: monitor failed", n + 1));
            let report = Report::ResourceFailed { resource: "vip".into(), reason: "monitor failed (simulated)".into() };
            self.report(n, package, epoch, report);
        }
    }

    /// Arms the watchdog while anything is active; pets it only while the lease is `Valid`.
    fn tend_watchdog(&mut self, n: usize, status: LeaseStatus) {
        let now = self.local(n);
        let node = &mut self.nodes[n];
        if !node.has_watchdog {
            return;
        }
        let active = !node.records.is_empty();
        if !active {
            // Magic close: nothing to protect.
            node.watchdog.armed = false;
            return;
        }
        // Arming is not a pet: a node that arms without a valid lease is reset at the old deadline.
        if status == LeaseStatus::Valid {
            node.watchdog.last_pet = now;
        }
        node.watchdog.armed = true;
        if !node.watchdog.check_scheduled {
            node.watchdog.check_scheduled = true;
            let deadline = node.watchdog.last_pet + node.state.settings.stop_budget();
            let at = node.clock.global_at(deadline);
            self.schedule(at, Event::WatchdogCheck { node: n });
        }
    }

    /// The watchdog timer: resets the node if it was not petted in time.
    pub(crate) fn on_watchdog_check(&mut self, n: usize) {
        let now = self.local(n);
        let node = &mut self.nodes[n];
        node.watchdog.check_scheduled = false;
        if node.power == Power::Off || !node.watchdog.armed {
            return;
        }
        let deadline = node.watchdog.last_pet + node.state.settings.stop_budget();
        if now >= deadline {
            self.stats.watchdog_resets += 1;
            self.trace(|| format!("n{} watchdog reset", n + 1));
            let reboot = self.rng.random_range(ms(500)..=ms(3_000));
            self.power_off(n, reboot);
        } else {
            node.watchdog.check_scheduled = true;
            let at = node.clock.global_at(deadline);
            self.schedule(at, Event::WatchdogCheck { node: n });
        }
    }
}
