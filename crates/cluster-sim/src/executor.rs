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
//!    a dependent starts only once what it depends on on the same node runs here, and the rest
//!                        runs where it must by S (clusterd's executor checks the same)
//!    promotable, active, Running, lease Valid: promote while S says promoting/primary (Report
//!                        Promoted), demote while it says replica/demoting (Report Demoted); a
//!                        stop of a promoted instance demotes first (promoted until it ends)
//!  watchdog: armed while anything is active, petted only while status = Valid,
//!            timeout = stop_budget; expiry resets the node (everything inactive at once)
//! ```

use cluster_model::{Command, LeaseStatus, Phase, Report, Role};
use cluster_package::Location;
use rand::Rng;

use crate::node::{Activity, Busy, Power, Record, RoleOp};
use crate::sim::{ms, Event, OpOutcome, Sim};

/// Reports are resent after this long until the applied state shows them.
const REPORT_RETRY_MS: u64 = 300;
/// How often a start blocks for seconds (protected scenarios, fault phase).
const BLOCKING_START: f64 = 0.03;
/// The resources' stop timeout (the package format's default).
const STOP_TIMEOUT_US: u64 = 20_000_000;

enum Step {
    Start { package: String, epoch: u64 },
    Stop { package: String, orderly: bool },
    Promote { package: String },
    Demote { package: String },
    Abandon { package: String },
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
        let lapsed_now = status != LeaseStatus::Valid;
        let may_start = node.holder.may_start(t, node.applied as u64, settings);
        if !node.probed {
            // A restarted daemon decides nothing before it holds a lease (a grant on a recent enough
            // state, or its predecessor's lease, keep-only); then it probes what runs (adopts its
            // own, stops the rest, below).
            if !may_start && status != LeaseStatus::Valid {
                if lapsed_now {
                    self.nodes[n].last_lease_lapse = Some(t);
                }
                return;
            }
            self.nodes[n].probed = true;
        }
        let node = &self.nodes[n];
        let me = node.name.as_str();
        let mut steps = Vec::new();
        let mut lapsed = Vec::new();
        let mut interrupted = Vec::new();
        let mut scores = Vec::new();
        let mut held = 0;
        for (name, package) in &node.state.packages {
            if let Some(busy) = node.busy.get(name) {
                // Its worker waits for something (a report's answer, a monitor). The wait ends
                // early when the package changes, or when the lease reaches its stop budget with
                // the package active here (issue 11, finding 3); the old executor sat it out.
                let active = node.records.get(name).is_some_and(|r| r.activity == Activity::Active);
                let changed = busy.seen.as_ref() != Some(package);
                if self.config.waits_ignore_lease || !(changed || (active && status != LeaseStatus::Valid)) {
                    continue;
                }
                interrupted.push(name.clone());
            }
            if package.frozen {
                // Nothing is started, stopped or monitored, except that the lease outranks the
                // freeze: at its stop budget the node stops what it runs, frozen or not.
                let active = node.records.get(name).is_some_and(|record| record.activity == Activity::Active);
                if active && status != LeaseStatus::Valid && !self.config.frozen_ignores_lease {
                    let epoch = node.records[name].epoch;
                    if package.owner.as_deref() == Some(node.name.as_str()) && package.epoch == epoch {
                        lapsed.push((name.clone(), epoch));
                    }
                    steps.push(Step::Stop { package: name.clone(), orderly: false });
                }
                continue;
            }
            let mine = package.owner.as_deref() == Some(me);
            let wanted = mine && matches!(package.phase, Phase::Starting | Phase::Running);
            // A package whose failed stop this daemon reported at this epoch is blocked there once
            // the report commits; only a cleanup or a fence frees it, both away from this owner at
            // this epoch. Starting it again from a state older than its own report would race an
            // operator who stopped it by hand and cleaned it up (found with relayed renewals, seed
            // 1973 of 5-node fencing).
            let stop_failed_here = node.stop_failed_reported.get(name) == Some(&package.epoch);
            match node.records.get(name) {
                None if mine
                    && may_start
                    && !stop_failed_here
                    && (package.phase == Phase::Starting
                        || (package.phase == Phase::Running && !self.config.resource_failures)) =>
                {
                    if self.config.no_local_dependency_guard || dependencies_ready(node, &package.def) {
                        steps.push(Step::Start { package: name.clone(), epoch: package.epoch })
                    } else {
                        held += 1;
                    }
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
                            let orderly = mine
                                && package.phase == Phase::Stopping
                                && status == LeaseStatus::Valid
                                && record.epoch == package.epoch;
                            steps.push(Step::Stop { package: name.clone(), orderly });
                        } else if package.phase == Phase::Starting && self.due(record.reported_us) {
                            steps.push(Step::Report {
                                package: name.clone(),
                                epoch: record.epoch,
                                report: Report::Running { resources: vec![] },
                            });
                        } else if let Some(promotable) = &package.def.promotable {
                            let want = package.role.wants_promoted() && package.phase == Phase::Running;
                            let due = self.due(record.reported_us);
                            let epoch = record.epoch;
                            let report = |report| Step::Report { package: name.clone(), epoch, report };
                            // The negative control: a replica that cannot reach the primary's node takes over.
                            let takeover = self.config.promote_when_primary_unreachable
                                && package.phase == Phase::Running
                                && node.state.instances(&package.def.name).any(|(other, other_package)| {
                                    other != name
                                        && other_package.role.may_be_primary()
                                        && other_package.owner.as_deref().is_some_and(|owner| {
                                            self.names
                                                .iter()
                                                .position(|n| n == owner)
                                                .is_some_and(|m| !self.net.reachable(n, m))
                                        })
                                });
                            let want = want || takeover;
                            match (want, record.promoted, record.role_op) {
                                (true, false, None) => steps.push(Step::Promote { package: name.clone() }),
                                (false, true, None) => steps.push(Step::Demote { package: name.clone() }),
                                (true, true, None) if package.role == Role::Promoting && due => {
                                    steps.push(report(Report::Promoted))
                                }
                                (false, false, None) if package.role == Role::Demoting && due => {
                                    steps.push(report(Report::Demoted { reason: "demoted (simulated)".into() }))
                                }
                                _ if !promotable.promote.is_empty()
                                    && package.phase == Phase::Running
                                    && package.score.is_none()
                                    && due =>
                                {
                                    // Its agents set a promotion score (as `crm_master` in a start).
                                    scores.push((name.clone(), epoch));
                                }
                                _ => {}
                            }
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
                    // clusterd races a start against its lease: at the stop budget the start is
                    // abandoned (its future dropped) and the package stopped.
                    Activity::Starting if status != LeaseStatus::Valid => {
                        steps.push(Step::Abandon { package: name.clone() })
                    }
                    Activity::Starting | Activity::Stopping => {}
                },
            }
        }
        // Anything active that the state no longer knows is stopped.
        for (name, record) in &node.records {
            if record.activity == Activity::Active && !node.state.packages.contains_key(name) {
                steps.push(Step::Stop { package: name.clone(), orderly: false });
            }
        }
        for (package, epoch) in scores {
            let score = Some(self.rng.random_range(0..=10));
            steps.push(Step::Report { package, epoch, report: Report::Score { score } });
        }
        self.stats.dependents_held += held;
        let node = &mut self.nodes[n];
        if lapsed_now {
            node.last_lease_lapse = Some(t);
        }
        for name in interrupted {
            node.busy.remove(&name);
            self.stats.interrupted_waits += 1;
        }
        if !lapsed.is_empty() {
            self.stats.lapse_stops += lapsed.len() as u64;
            if self.config.scenario.single_fault() {
                let detail = format!(
                    "{} stopped {:?} at its stop budget: a leader's loss or a restart of clusterd must stop no \
                     package on a live node",
                    node.name,
                    lapsed.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>()
                );
                self.fail("bystander-stop", detail);
            }
        }
        let node = &mut self.nodes[n];
        let state = &node.state;
        node.stopped_for_lease.retain(|name, epoch| state.packages.get(name).is_some_and(|p| p.epoch == *epoch));
        node.stopped_for_lease.extend(lapsed);
        for step in steps {
            match step {
                Step::Start { package, epoch } => self.start(n, package, epoch),
                Step::Stop { package, orderly } => self.stop(n, package, orderly),
                Step::Promote { package } => self.change_role(n, package, RoleOp::Promote),
                Step::Demote { package } => self.change_role(n, package, RoleOp::Demote),
                Step::Abandon { package } => self.abandon(n, package),
                Step::Report { package, epoch, report } => self.report(n, package, epoch, report),
            }
        }
    }

    fn start(&mut self, n: usize, package: String, epoch: u64) {
        if let Err(detail) = self.epochs.on_start(&self.names[n], &package, epoch) {
            self.fail("start-epochs", detail);
        }
        let order = crate::invariants::dependency_order::on_start(
            &self.relations,
            &self.nodes,
            n,
            &package,
            &self.nodes[n].state,
        );
        if let Err(detail) = order {
            self.fail("dependency-order", detail);
        }
        self.stats.starts += 1;
        let op = self.next_op();
        // Now and then a start blocks for seconds (a mount on a stalled device): only nodes that a
        // watchdog or a fence protects are safe against that (its undoing outlasts the stop budget).
        let blocks = self.stage == crate::sim::Stage::Faults
            && self.config.scenario.stop_failures()
            && self.rng.random_bool(BLOCKING_START);
        let duration =
            if blocks { self.rng.random_range(ms(1_000)..=ms(6_000)) } else { self.rng.random_range(ms(5)..=ms(200)) };
        self.trace(|| format!("n{} starts {package} at epoch {epoch} ({} ms)", n + 1, duration / 1000));
        let fresh = !self.nodes[n].records.contains_key(&package);
        self.nodes[n].records.insert(
            package.clone(),
            Record {
                activity: Activity::Starting,
                epoch,
                op,
                stop_fails: false,
                since_us: self.now,
                reported_us: None,
                op_end_us: self.now + duration,
                promoted: false,
                role_op: None,
            },
        );
        self.after(duration, Event::OpDone { node: n, package, op });
        if fresh {
            // clusterd marks the package active, then arms or pets the watchdog before the start.
            self.tend_watchdog(n);
        }
    }

    fn stop(&mut self, n: usize, package: String, orderly: bool) {
        if orderly {
            if let Err(detail) =
                crate::invariants::dependency_order::on_orderly_stop(&self.relations, &self.nodes, n, &package)
            {
                self.fail("dependency-order", detail);
            }
        }
        self.stats.stops += 1;
        let op = self.next_op();
        let duration = self.rng.random_range(ms(5)..=ms(100));
        let fails = self.stage == crate::sim::Stage::Faults
            && self.config.scenario.stop_failures()
            && self.rng.random_bool(self.config.stop_failure);
        self.trace(|| {
            format!("n{} stops {package} ({} ms{})", n + 1, duration / 1000, if fails { ", will fail" } else { "" })
        });
        let now = self.now;
        let record = self.nodes[n].records.get_mut(&package).expect("stopping an active package");
        record.activity = Activity::Stopping;
        record.op = op;
        record.stop_fails = fails;
        record.op_end_us = now + duration;
        // A promoted instance is demoted first, within the stop: promoted until the stop ends.
        record.role_op = None;
        self.after(duration, Event::OpDone { node: n, package, op });
    }

    /// Promotes (primary-only resources and the agents' `promote`) or demotes an active instance.
    /// Promoted counts from the first instant of a promotion to the end of a demotion.
    fn change_role(&mut self, n: usize, package: String, change: RoleOp) {
        let op = self.next_op();
        let duration = self.rng.random_range(ms(5)..=ms(100));
        self.trace(|| format!("n{} {change:?} {package} ({} ms)", n + 1, duration / 1000));
        let record = self.nodes[n].records.get_mut(&package).expect("an active package");
        record.role_op = Some((change, op));
        if change == RoleOp::Promote {
            record.promoted = true;
            self.stats.promotions += 1;
        } else {
            self.stats.demotions += 1;
        }
        self.after(duration, Event::RoleOpDone { node: n, package, op });
    }

    /// A promotion or demotion ended: the ground truth changes now, even if `clusterd` is paused;
    /// the executor reports it when it runs.
    pub(crate) fn on_role_op_done(&mut self, n: usize, package: String, op: u64) {
        let Some(record) = self.nodes[n].records.get_mut(&package) else { return };
        let Some((change, current)) = record.role_op else { return };
        if current != op || record.activity != Activity::Active {
            return;
        }
        record.role_op = None;
        if change == RoleOp::Demote {
            record.promoted = false;
        }
        self.trace(|| format!("n{} {package}: {change:?} done", n + 1));
        if self.nodes[n].runs() {
            self.evaluate(n);
        }
    }

    /// The lease reached its stop budget during a start: the start is abandoned and the package
    /// stopped. The stop waits for the abandoned start to end and undoes it (clusterd's host layer
    /// tracks abandoned operations), failing if that outlasts the stop timeout; with
    /// `abandoned_starts_land` it finds nothing yet, ends at once, and the start lands later.
    fn abandon(&mut self, n: usize, package: String) {
        self.stats.stops += 1;
        self.stats.abandoned_starts += 1;
        let op = self.next_op();
        let stop = self.rng.random_range(ms(5)..=ms(100));
        let now = self.now;
        let land = self.config.abandoned_starts_land;
        let boot = self.nodes[n].boots;
        let record = self.nodes[n].records.get_mut(&package).expect("abandoning a start");
        let remaining = record.op_end_us.saturating_sub(now);
        record.activity = Activity::Stopping;
        record.op = op;
        record.role_op = None;
        let duration = if land {
            let lands_at = record.op_end_us;
            self.schedule(lands_at, Event::GhostLands { node: n, boot, package: package.clone() });
            stop
        } else {
            record.stop_fails = remaining + stop > STOP_TIMEOUT_US;
            (remaining + stop).min(STOP_TIMEOUT_US)
        };
        self.nodes[n].records.get_mut(&package).expect("abandoning a start").op_end_us = now + duration;
        self.trace(|| {
            format!("n{} abandons the start of {package} at its stop budget; stop ({} ms)", n + 1, duration / 1000)
        });
        self.after(duration, Event::OpDone { node: n, package, op });
    }

    pub(crate) fn next_op(&mut self) -> u64 {
        self.seq_op += 1;
        self.seq_op
    }

    fn report(&mut self, n: usize, package: String, epoch: u64, report: Report) {
        let now = self.now;
        if matches!(report, Report::StopFailed { .. }) && !self.config.start_after_reported_stop_failure {
            self.nodes[n].stop_failed_reported.insert(package.clone(), epoch);
        }
        match self.nodes[n].records.get_mut(&package) {
            Some(record) => record.reported_us = Some(now),
            None => {
                self.nodes[n].stopped_reported_us.insert(package.clone(), now);
            }
        }
        let command = Command::Report {
            package: package.clone(),
            node: self.names[n].clone(),
            epoch,
            report,
            at_ms: self.local_ms(n),
        };
        self.propose_and_wait(n, &package, command);
    }

    /// The wait `op` of the worker of `package` on node `n` ended (answered, timed out, done).
    pub(crate) fn end_busy(&mut self, n: usize, package: &str, op: u64) {
        if self.nodes[n].busy.get(package).is_some_and(|busy| busy.op == op) {
            self.nodes[n].busy.remove(package);
            if self.nodes[n].runs() {
                self.evaluate(n);
            }
        }
    }

    /// The nemesis: a monitor of an active package runs, usually for a moment, sometimes until its
    /// timeout (a hung OCF agent, up to 20 s); it fails half of the time. The worker waits for it.
    pub(crate) fn start_monitor(&mut self, n: usize, package: String) {
        let node = &self.nodes[n];
        let active = node.records.get(&package).is_some_and(|record| record.activity == Activity::Active);
        // clusterd monitors a package once it reported it running.
        let running = node.state.packages.get(&package).is_some_and(|p| p.phase == Phase::Running);
        if !active || !running || node.busy.contains_key(&package) || !node.runs() {
            return;
        }
        let duration = if self.rng.random_bool(0.75) {
            self.rng.random_range(ms(10)..=ms(300))
        } else {
            self.rng.random_range(ms(1_000)..=ms(20_000))
        };
        let fails = self.config.resource_failures && self.rng.random_bool(0.5);
        let op = self.next_op();
        self.trace(|| format!("n{} {package}: monitor runs ({} ms)", n + 1, duration / 1000));
        let seen = self.nodes[n].state.packages.get(&package).cloned();
        self.nodes[n].busy.insert(package.clone(), Busy { op, why: "waits for a monitor", seen });
        let incarnation = self.nodes[n].incarnation;
        self.after(duration, Event::MonitorDone { node: n, incarnation, package, op, fails });
    }

    pub(crate) fn on_monitor_done(&mut self, n: usize, package: String, op: u64, fails: bool) {
        if self.nodes[n].busy.get(&package).is_none_or(|busy| busy.op != op) {
            return;
        }
        self.nodes[n].busy.remove(&package);
        // A failure is a fault: none once the heal phase began.
        if fails && self.stage == crate::sim::Stage::Faults {
            self.monitor_failure(n, package);
        }
        if self.nodes[n].runs() {
            self.evaluate(n);
        }
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

    /// clusterd's `tend_watchdog`, run at every heartbeat tick and right before a start: armed
    /// (with the stop budget as timeout) while anything is active and the lease is `Valid`, petted
    /// only while the lease is `Valid`, disarmed (magic close) once nothing is active.
    pub(crate) fn tend_watchdog(&mut self, n: usize) {
        let now = self.local(n);
        let node = &mut self.nodes[n];
        if !node.has_watchdog {
            return;
        }
        let settings = &node.state.settings;
        let valid = node.holder.status(now, settings) == LeaseStatus::Valid;
        let active = !node.records.is_empty();
        if !active && !node.nowayout {
            // Magic close: nothing to protect.
            node.watchdog.armed = false;
            return;
        }
        // A `nowayout` driver cannot be stopped: with nothing active it is petted whatever the
        // lease (it protects nothing then), else it would reset a healthy node (issue 11, trap C).
        let idle_nowayout = !active && node.watchdog.armed && !self.config.nowayout_left_unpetted;
        if !active && !idle_nowayout {
            return;
        }
        if !valid && !idle_nowayout {
            return;
        }
        // Armed, or re-armed when the stop budget changed: a timeout longer than the budget would
        // fire after the lease's end (setting the timeout pets too, so only while valid).
        let mut reschedule = !node.watchdog.check_scheduled;
        if !node.watchdog.armed || node.watchdog.timeout != settings.stop_budget() {
            node.watchdog.armed = true;
            reschedule |= settings.stop_budget() < node.watchdog.timeout;
            node.watchdog.timeout = settings.stop_budget();
        }
        node.watchdog.last_pet = now;
        if reschedule {
            node.watchdog.check_scheduled = true;
            let deadline = node.watchdog.last_pet + node.watchdog.timeout;
            let at = node.clock.global_at(deadline);
            self.schedule(at, Event::WatchdogCheck { node: n });
        }
    }

    /// The watchdog timer: resets the node if it was not petted in time. A reset of a node whose
    /// clusterd runs with a valid lease is a liveness bug (`healthy-reset`): it only has to be
    /// petted in time.
    pub(crate) fn on_watchdog_check(&mut self, n: usize) {
        let now = self.local(n);
        let node = &mut self.nodes[n];
        node.watchdog.check_scheduled = false;
        if node.power == Power::Off || !node.watchdog.armed {
            return;
        }
        let deadline = node.watchdog.last_pet + node.watchdog.timeout;
        if now < deadline {
            node.watchdog.check_scheduled = true;
            let at = node.clock.global_at(deadline);
            self.schedule(at, Event::WatchdogCheck { node: n });
            return;
        }
        // Healthy: running, and its lease was valid for the whole timeout (a lease that lapsed
        // within it rightly stopped the pets).
        let healthy = node.paused.is_none()
            && node.power == Power::Up
            && node.holder.status(now, &node.state.settings) == LeaseStatus::Valid
            && node.last_lease_lapse.is_none_or(|at| at + node.watchdog.timeout < now);
        let detail = format!(
            "{} reset by its watchdog while its clusterd ran with a valid lease (timeout {:?}, last pet {:?} ago)",
            node.name,
            node.watchdog.timeout,
            now - node.watchdog.last_pet
        );
        if healthy {
            self.fail("healthy-reset", detail);
        }
        if self.config.scenario == crate::config::Scenario::DaemonRestart {
            self.fail(
                "reset-after-restart",
                format!("{} reset by its watchdog after a restart of clusterd", self.names[n]),
            );
        }
        self.stats.watchdog_resets += 1;
        self.trace(|| format!("n{} watchdog reset", n + 1));
        let reboot = self.rng.random_range(ms(500)..=ms(3_000));
        self.power_off(n, reboot);
    }
}

/// Whether what `def` depends on runs where it must for a start on `node`: on the same node, really
/// active here (clusterd asks its own workers); elsewhere, by the applied state.
fn dependencies_ready(node: &crate::node::Node, def: &cluster_package::PackageDef) -> bool {
    def.depends.iter().all(|dependency| match dependency.location {
        Location::SameNode => node.records.iter().any(|(key, record)| {
            cluster_model::relations::package_of(key) == dependency.package
                && record.activity == Activity::Active
                && node
                    .state
                    .packages
                    .get(key)
                    .is_some_and(|p| p.phase == Phase::Running && p.owner.as_deref() == Some(node.name.as_str()))
        }),
        Location::AnyNode | Location::DifferentNode => {
            cluster_model::relations::unmet_dependency(&node.state, dependency, &node.name).is_none()
        }
    })
}
