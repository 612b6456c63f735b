//! The nemesis (fault phase) and the operator who heals the cluster (heal phase).
//!
//! Fault phase: every 150–900 ms one of power crash, daemon crash, pause (≤ `max_pause`),
//! partition (random split, healed after 0.2–3 s), a monitor failure of an active package, or an
//! operator command (`pkg move`, `pkg stop`, `pkg run`, `pkg freeze`, `pkg unfreeze`, `node standby`,
//! `node online`, `cluster set lease|stop_budget`), as the scenario allows. At most a
//! minority of nodes is crashed or paused at once. Heal phase: partitions healed, paused nodes
//! resumed, crashed nodes restart on schedule, no loss; the operator brings standby nodes online,
//! unfreezes frozen packages and, for blocked or failed packages, stops the resources by hand and runs `pkg cleanup`.

use std::time::Duration;

use cluster_model::{Command, Phase};
use rand::Rng;

use crate::node::{Activity, Leave, Power};
use crate::sim::{ms, Event, Sim, Stage, Timer};

impl Sim {
    fn impaired(&self) -> usize {
        self.nodes.iter().filter(|node| !node.runs()).count()
    }

    fn pick_runner(&mut self) -> Option<usize> {
        let limit = (self.nodes.len() - 1) / 2;
        if self.impaired() >= limit {
            return None;
        }
        let runners: Vec<usize> = (0..self.nodes.len()).filter(|n| self.nodes[*n].runs()).collect();
        (!runners.is_empty()).then(|| runners[self.rng.random_range(0..runners.len())])
    }

    pub(crate) fn on_fault(&mut self) {
        if self.stage != Stage::Faults {
            return;
        }
        let scenario = self.config.scenario;
        if scenario.single_fault() {
            let next = self.rng.random_range(ms(1_500)..=ms(3_000));
            self.after(next, Event::Fault);
            // Only in a settled cluster, every node up for a while (a node that just booted helps no
            // keep for one lease): the survivors always form a quorum and renew the leases.
            let now = self.now;
            let all_up = self.nodes.iter().all(|node| node.runs() && now >= node.up_since + ms(3_000));
            if !all_up {
                return;
            }
            if scenario == crate::config::Scenario::LeaderLoss {
                // Only the Raft leader dies.
                if let Some(l) = self.leader.filter(|l| self.nodes[*l].runs()) {
                    self.stats.crashes += 1;
                    let down = self.rng.random_range(ms(200)..=ms(3_000));
                    self.trace(|| format!("FAULT n{} (the leader) power crash for {} ms", l + 1, down / 1000));
                    self.power_off(l, down);
                }
            } else {
                // clusterd dies on any node; systemd starts it again (RestartSec=100ms, plus its start).
                let n = self.rng.random_range(0..self.nodes.len());
                self.stats.daemon_crashes += 1;
                let down = self.rng.random_range(ms(100)..=ms(250));
                self.trace(|| format!("FAULT n{} clusterd crash, restarted after {} ms", n + 1, down / 1000));
                self.daemon_crash(n, down);
            }
            return;
        }
        let next = self.rng.random_range(ms(150)..=ms(900));
        self.after(next, Event::Fault);
        match self.rng.random_range(0..12) {
            0 | 1 => {
                if let Some(n) = self.pick_runner() {
                    self.stats.crashes += 1;
                    let down = self.rng.random_range(ms(200)..=ms(3_000));
                    self.trace(|| format!("FAULT n{} power crash for {} ms", n + 1, down / 1000));
                    self.power_off(n, down);
                }
            }
            2 if scenario.daemon_crashes() => {
                if let Some(n) = self.pick_runner() {
                    self.stats.daemon_crashes += 1;
                    let down = self.rng.random_range(ms(50)..=ms(2_500));
                    self.trace(|| format!("FAULT n{} clusterd crash for {} ms", n + 1, down / 1000));
                    self.daemon_crash(n, down);
                }
            }
            3 | 4 if scenario.pauses() => {
                if let Some(n) = self.pick_runner() {
                    self.stats.pauses += 1;
                    let max = self.config.max_pause.as_micros() as u64;
                    let length = self.rng.random_range(ms(50)..=max.max(ms(50)));
                    self.next_pause += 1;
                    let pause = self.next_pause;
                    self.nodes[n].paused = Some(pause);
                    self.trace(|| format!("FAULT n{} paused for {} ms", n + 1, length / 1000));
                    self.after(length, Event::Resume { node: n, pause });
                    self.check_leader();
                }
            }
            5 | 6 => {
                self.stats.partitions += 1;
                let count = self.nodes.len();
                let mut groups: Vec<u8> = (0..count).map(|_| self.rng.random_range(0..2)).collect();
                if groups.iter().all(|g| *g == groups[0]) {
                    let lonely = self.rng.random_range(0..count);
                    groups[lonely] ^= 1;
                }
                let length = self.rng.random_range(ms(200)..=ms(3_000));
                self.trace(|| format!("FAULT partition {groups:?} for {} ms", length / 1000));
                self.net.partition(groups);
                let generation = self.net.generation;
                self.after(length, Event::HealPartition { generation });
                self.check_leader();
            }
            7 => {
                let active: Vec<(usize, String)> = (0..self.nodes.len())
                    .flat_map(|n| self.nodes[n].records.keys().map(move |p| (n, p.clone())))
                    .collect();
                if !active.is_empty() {
                    let (n, package) = active[self.rng.random_range(0..active.len())].clone();
                    self.start_monitor(n, package);
                }
            }
            11 => {
                if let Some(n) = self.pick_runner() {
                    self.start_leave(n);
                }
            }
            _ => self.operator_fault(),
        }
    }

    /// `systemctl stop clusterd` on node `n` (clusterd's `Engine::leave`): tell the cluster
    /// (`NodeLeave`), wait until the controller moved every package away, else give the lease up so
    /// that everything stops here; then the daemon exits and is started again later.
    fn start_leave(&mut self, n: usize) {
        self.stats.leaves += 1;
        let now = self.local(n);
        let node = &mut self.nodes[n];
        node.leave = Some(Leave {
            hand_over_until: now + Duration::from_secs(2),
            exit_by: now + Duration::from_secs(5),
            lease_given_up: false,
        });
        self.trace(|| format!("FAULT n{} clusterd stops (leaves)", n + 1));
        if self.config.leave_without_handing_over {
            self.daemon_exit(n);
            return;
        }
        let leave = Command::NodeLeave { name: self.names[n].clone(), at_ms: self.local_ms(n) };
        self.propose(n, leave);
        self.timer_at(n, now + Duration::from_millis(20), Timer::LeaveCheck);
    }

    pub(crate) fn on_leave_check(&mut self, n: usize) {
        let now = self.local(n);
        let node = &self.nodes[n];
        let Some(leave) = node.leave else { return };
        let me = node.name.as_str();
        // Blocked packages stay as they are, and frozen ones while the lease is kept (clusterd's
        // `wait_until_left`); once the lease is given up, frozen ones stop too and are waited for.
        let given_up = leave.lease_given_up;
        let blocked = |name: &str| {
            node.state.packages.get(name).is_some_and(|p| (p.frozen && !given_up) || p.phase == Phase::Blocked)
        };
        let owned =
            node.state.packages.iter().any(|(name, package)| package.owner.as_deref() == Some(me) && !blocked(name));
        let active = node.records.iter().any(|(name, record)| record.activity != Activity::Stuck && !blocked(name));
        let told = node.state.nodes.get(me).is_some_and(|record| record.leaving);
        let handed_over = !leave.lease_given_up && told && !owned && !active;
        if handed_over || (leave.lease_given_up && !active) || now >= leave.exit_by {
            self.trace(|| {
                format!("n{} clusterd exits (left{})", n + 1, if active { ", resources still active" } else { "" })
            });
            self.daemon_exit(n);
            return;
        }
        if !leave.lease_given_up && (now >= leave.hand_over_until || node.leader_hint.is_none()) {
            self.stats.leaves_given_up += 1;
            self.trace(|| format!("n{} gives its lease up", n + 1));
            let node = &mut self.nodes[n];
            node.leave = Some(Leave { lease_given_up: true, ..leave });
            node.holder.revoke();
            self.evaluate(n);
        }
        self.timer_at(n, now + Duration::from_millis(20), Timer::LeaveCheck);
    }

    /// A stopping daemon exits: what is still active stays (as at a crash); the watchdog was
    /// disarmed if nothing is; systemd starts it again later.
    fn daemon_exit(&mut self, n: usize) {
        if self.nodes[n].records.is_empty() && !self.nodes[n].nowayout {
            self.nodes[n].watchdog.armed = false;
        }
        let down = self.rng.random_range(ms(200)..=ms(3_000));
        self.daemon_crash(n, down);
    }

    fn operator_fault(&mut self) {
        let package = self.packages[self.rng.random_range(0..self.packages.len())].clone();
        let node = self.names[self.rng.random_range(0..self.names.len())].clone();
        let at_ms = self.now / 1_000;
        if self.rng.random_bool(0.1) {
            self.membership_change();
            return;
        }
        // A move names one instance of a package that has several.
        let instance = self.leader.and_then(|l| {
            let keys = self.nodes[l].state.keys_named(&package);
            (keys.len() > 1).then(|| keys[self.rng.random_range(0..keys.len())].clone())
        });
        let command = match self.rng.random_range(0..10) {
            0 | 1 => Command::PkgMove { name: instance.unwrap_or(package), to: node, at_ms },
            2 => Command::PkgStop { name: package, at_ms },
            3 => Command::PkgRun { name: package, node: None, at_ms },
            4 => Command::NodeStandby { name: node, standby: true, at_ms },
            5 => Command::NodeStandby { name: node, standby: false, at_ms },
            // Timings changed at runtime (`clusterctl cluster set`); values the settings refuse
            // in combination are refused at apply, as for an operator.
            6 => {
                let value = ["600ms", "1s", "3s"][self.rng.random_range(0..3)];
                Command::SetSetting { name: "lease".into(), value: value.into() }
            }
            7 => {
                let value = ["auto", "250ms", "700ms"][self.rng.random_range(0..3)];
                Command::SetSetting { name: "stop_budget".into(), value: value.into() }
            }
            8 => Command::PkgFreeze { name: package, frozen: true, at_ms },
            _ => Command::PkgFreeze { name: package, frozen: false, at_ms },
        };
        self.trace(|| format!("OPERATOR {command:?}"));
        self.operator(command);
    }

    /// `clusterctl node remove` of a random node that is not the leader (at most one removed at a
    /// time), or `node add` of the removed one. The removal is refused while the node owns packages
    /// in the leader's state (`ClusterState::removal_refused`); the old daemon removed it anyway.
    fn membership_change(&mut self) {
        let Some(l) = self.leader else { return };
        if let Some(&back) = self.removed.iter().next() {
            let name = self.names[back].clone();
            self.trace(|| format!("OPERATOR node add {name}"));
            self.removed.remove(&back);
            self.stats.operator_commands += 1;
            return;
        }
        let candidates: Vec<usize> = (0..self.nodes.len()).filter(|n| *n != l).collect();
        let n = candidates[self.rng.random_range(0..candidates.len())];
        let name = self.names[n].clone();
        if let (Some(refused), false) = (self.nodes[l].state.removal_refused(&name), self.config.remove_undrained) {
            self.trace(|| format!("OPERATOR node remove {name}: {refused}"));
            self.stats.removals_refused += 1;
            return;
        }
        self.trace(|| format!("OPERATOR node remove {name}"));
        self.stats.operator_commands += 1;
        self.stats.removals += 1;
        self.removed.insert(n);
    }

    /// Power off (crash, watchdog reset, fence): every resource inactive at once.
    pub(crate) fn power_off(&mut self, n: usize, down_us: u64) {
        let node = &mut self.nodes[n];
        node.power = Power::Off;
        node.records.clear();
        node.ghosts.clear();
        node.stop_failed_reported.clear();
        node.boots += 1;
        node.watchdog = Default::default();
        node.lose_daemon_state();
        let incarnation = node.incarnation;
        if self.leader == Some(n) {
            self.trace(|| format!("n{} (leader) is off", n + 1));
        }
        self.after(down_us, Event::Restart { node: n, incarnation });
        self.check_leader();
    }

    /// `clusterd` dies: resources stay active (operations in flight are cut short, leaving what
    /// they touched active), the watchdog keeps counting.
    fn daemon_crash(&mut self, n: usize, down_us: u64) {
        let node = &mut self.nodes[n];
        // What the daemon last wrote to its runtime folder (every heartbeat).
        node.persisted_lease_end = node.holder.end();
        node.power = Power::DaemonDown;
        for record in node.records.values_mut() {
            if matches!(record.activity, Activity::Starting | Activity::Stopping) {
                record.activity = Activity::Active;
            }
            record.op = 0;
            // A promotion or demotion cut short leaves the instance promoted (ground truth).
            record.role_op = None;
        }
        node.lose_daemon_state();
        let incarnation = node.incarnation;
        self.after(down_us, Event::Restart { node: n, incarnation });
        self.check_leader();
    }

    /// The machine boots or `clusterd` is restarted: empty lease, announce itself.
    pub(crate) fn restart(&mut self, n: usize) {
        let started = self.local(n);
        let now = self.now;
        let node = &mut self.nodes[n];
        // A daemon that restarts on a running machine finds its predecessor's lease in the runtime
        // folder: while it runs with the stop budget left, it keeps (adopts) what runs, pets the
        // watchdog at once, and starts nothing before a grant (issue 14, item 2).
        let restored = (node.power == Power::DaemonDown && !self.config.no_lease_restore)
            .then_some(node.persisted_lease_end)
            .flatten()
            .filter(|end| started + node.state.settings.stop_budget() < *end);
        // A restarted daemon finds the refusals its predecessor promised (kept under /run, per
        // boot); a machine that boots has none, and refuses keeps for one wait.
        node.ledger = match node.power {
            Power::DaemonDown => cluster_model::KeepLedger::restored(started, node.ledger.refusals()),
            _ => cluster_model::KeepLedger::new(started),
        };
        if node.power == Power::Off {
            node.up_since = now;
        }
        node.power = Power::Up;
        node.lose_daemon_state();
        if let Some(end) = restored {
            node.holder = cluster_model::LeaseHolder::restored(end);
            self.stats.adoptions += 1;
        }
        let node = &mut self.nodes[n];
        node.hello_pending = true;
        self.trace(|| format!("n{} restarts{}", n + 1, if restored.is_some() { " with its lease" } else { "" }));
        let now = self.local(n);
        self.timer_at(n, now, crate::sim::Timer::Heartbeat);
        if restored.is_some() {
            // The watchdog first, before anything slow.
            self.tend_watchdog(n);
        }
        self.evaluate(n);
        self.check_leader();
    }

    /// The leader's controller asked to fence `target`.
    pub(crate) fn start_fence(&mut self, l: usize, target: String) {
        if !self.nodes[l].fencing.insert(target.clone()) {
            return;
        }
        if !(self.leader == Some(l) && self.nodes[l].leader_of == Some(self.term) && self.reaches_majority(l)) {
            let detail = format!(
                "{} fences {target} while it is not the leader a quorum follows (term {:?}, current term {})",
                self.names[l], self.nodes[l].leader_of, self.term
            );
            self.fail("fence-by-deposed-leader", detail);
        }
        let Some(t) = self.names.iter().position(|name| *name == target) else {
            return;
        };
        let term = self.nodes[l].leader_of.unwrap_or(0);
        let duration = self.rng.random_range(ms(100)..=ms(600));
        self.trace(|| format!("n{} fences {target} ({} ms)", l + 1, duration / 1000));
        self.after(duration, Event::FenceDone { by: l, term, target: t });
    }

    /// The fence agent confirmed `target` is off; the leader records it if it still leads.
    pub(crate) fn on_fence_done(&mut self, by: usize, term: u64, target: usize) {
        self.stats.fences += 1;
        let reboot = self.rng.random_range(ms(1_000)..=ms(3_000));
        self.power_off(target, reboot);
        let name = self.names[target].clone();
        if self.nodes[by].leader_of == Some(term) && self.nodes[by].power == Power::Up {
            self.nodes[by].fencing.remove(&name);
            if self.confirm(by) {
                let at_ms = self.local_ms(by);
                let now = self.local(by);
                self.nodes[by].table.fenced(&name, now);
                let owned = self.nodes[by]
                    .state
                    .packages
                    .iter()
                    .filter(|(_, package)| package.owner.as_deref() == Some(name.as_str()))
                    .map(|(package, state)| (package.clone(), state.epoch))
                    .collect();
                self.commit(by, Command::NodeFenced { node: name, owned, at_ms });
            }
        }
    }

    pub(crate) fn on_heal(&mut self) {
        self.stage = Stage::Heal;
        self.net.faulty = false;
        self.net.heal();
        self.trace(|| "HEAL".into());
        for n in 0..self.nodes.len() {
            if self.nodes[n].paused.is_some() {
                self.resume(n);
            }
        }
        self.check_leader();
        self.after(ms(200), Event::HealOperator);
    }

    /// The operator undoes the fault phase's standby commands and resolves blocked packages.
    pub(crate) fn on_heal_operator(&mut self) {
        self.after(ms(500), Event::HealOperator);
        let Some(l) = self.leader else { return };
        let at_ms = self.now / 1_000;
        let state = &self.nodes[l].state;
        let standby: Vec<String> =
            state.nodes.iter().filter(|(_, record)| record.standby).map(|(name, _)| name.clone()).collect();
        let frozen: Vec<String> =
            state.packages.iter().filter(|(_, package)| package.frozen).map(|(name, _)| name.clone()).collect();
        let stuck: Vec<(String, Option<String>)> = state
            .packages
            .iter()
            .filter(|(_, p)| matches!(p.phase, Phase::Blocked | Phase::Failed))
            .map(|(name, p)| (name.clone(), p.owner.clone()))
            .collect();
        for name in standby {
            self.operator(Command::NodeStandby { name, standby: false, at_ms });
        }
        for name in frozen {
            self.operator(Command::PkgFreeze { name, frozen: false, at_ms });
        }
        for (package, owner) in stuck {
            // By hand: the operator makes sure the resources are stopped, then vouches for it.
            // (Whatever the executor there is doing with them: a blocked package may be being
            // stopped by its restarted owner.)
            if let Some(n) = owner.and_then(|o| self.names.iter().position(|name| *name == o)) {
                self.nodes[n].records.remove(&package);
            }
            self.operator(Command::PkgCleanup { name: package, at_ms });
        }
    }
}
