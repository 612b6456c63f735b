//! Prometheus metrics (OpenMetrics text, `prometheus-client`): every name, its labels and its
//! meaning are in docs/monitoring.md.
//!
//! Two kinds of metric, so that a node nobody scrapes does no work for them:
//!
//! ```text
//!   counters, histograms  <── recorded where things happen: client requests (server.rs), agent
//!                             actions (ActionObserver), fences (MeteredFencer), the watchdog
//!                             (MeteredWatchdog), alert hooks (alerts.rs), applied events (follow_events)
//!   gauges                <── built at scrape time from the Raft status, the engine's lease view and
//!                             the local replicated state (`Metrics::render`)
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cluster_agents::{Action, ActionObserver};
use cluster_api::{ClientRequest, NodeRole, Response};
use cluster_host::{FenceAction, FenceDevice, FenceError, Fencer, Watchdog, WatchdogError};
use cluster_model::controller::Liveness;
use cluster_model::{Event, Phase};
use cluster_raft::ConsensusNode;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::engine::Engine;

type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn request_buckets() -> Histogram {
    // 0.25 ms … 8 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

fn agent_buckets() -> Histogram {
    // 1 ms … 65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn phase_buckets() -> Histogram {
    // 10 ms … 5.8 h
    Histogram::new(exponential_buckets(0.01, 2.0, 21))
}

fn failover_buckets() -> Histogram {
    Histogram::new([0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0])
}

fn hook_buckets() -> Histogram {
    Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0])
}

/// The metrics of one daemon.
pub(crate) struct Metrics {
    registry: Registry,
    started: SystemTime,
    client_requests: Family<Labels, Counter>,
    client_request_seconds: Histograms,
    agent_actions: Family<Labels, Counter>,
    agent_action_seconds: Histograms,
    fence_actions: Family<Labels, Counter>,
    fence_seconds: Histograms,
    alert_runs: Family<Labels, Counter>,
    alert_seconds: Histograms,
    alert_events_skipped: Counter,
    transitions: Family<Labels, Counter>,
    phase_seconds: Histograms,
    failover_seconds: Histogram,
    watchdog_pets: Counter,
    watchdog_errors: Family<Labels, Counter>,
    /// The watchdog, read at scrape time (armed, timeout).
    watchdog: Mutex<Option<Arc<dyn Watchdog>>>,
    /// Failovers in progress: package → when it left its failed node (ms since the Unix epoch).
    failovers: Mutex<BTreeMap<String, u64>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub(crate) fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("clusterd");
        let metrics = Metrics {
            registry: Registry::default(),
            started: SystemTime::now(),
            client_requests: Family::default(),
            client_request_seconds: Family::new_with_constructor(request_buckets),
            agent_actions: Family::default(),
            agent_action_seconds: Family::new_with_constructor(agent_buckets),
            fence_actions: Family::default(),
            fence_seconds: Family::new_with_constructor(agent_buckets),
            alert_runs: Family::default(),
            alert_seconds: Family::new_with_constructor(hook_buckets),
            alert_events_skipped: Counter::default(),
            transitions: Family::default(),
            phase_seconds: Family::new_with_constructor(phase_buckets),
            failover_seconds: failover_buckets(),
            watchdog_pets: Counter::default(),
            watchdog_errors: Family::default(),
            watchdog: Mutex::new(None),
            failovers: Mutex::new(BTreeMap::new()),
        };
        registry.register(
            "client_requests",
            "Client requests served by this node (clusterctl, the API), by request and result",
            metrics.client_requests.clone(),
        );
        registry.register(
            "client_request_duration_seconds",
            "Time to answer a client request, forwarding to the leader included",
            metrics.client_request_seconds.clone(),
        );
        registry.register(
            "agent_actions",
            "Resource agent actions run on this node, by resource type, action and result",
            metrics.agent_actions.clone(),
        );
        registry.register(
            "agent_action_duration_seconds",
            "Duration of resource agent actions on this node",
            metrics.agent_action_seconds.clone(),
        );
        registry.register(
            "fence_actions",
            "Fence agent runs started by this node (as leader), by target node, action and result",
            metrics.fence_actions.clone(),
        );
        registry.register(
            "fence_action_duration_seconds",
            "Duration of fence agent runs",
            metrics.fence_seconds.clone(),
        );
        registry.register(
            "alert_hook_runs",
            "Alert hook runs by this node (as leader), by hook and result (ok, failed, timeout)",
            metrics.alert_runs.clone(),
        );
        registry.register("alert_hook_duration_seconds", "Duration of alert hook runs", metrics.alert_seconds.clone());
        registry.register(
            "alert_events_skipped",
            "Events dropped from the bounded history before their alert hooks could run",
            metrics.alert_events_skipped.clone(),
        );
        registry.register(
            "package_transitions",
            "Package phase transitions applied by this node since it started, by phase left and entered",
            metrics.transitions.clone(),
        );
        registry.register(
            "package_phase_duration_seconds",
            "Time packages spent in a phase before leaving it (transitions applied since this node started)",
            metrics.phase_seconds.clone(),
        );
        registry.register(
            "package_failover_duration_seconds",
            "From a package leaving a failed node (lost lease, fence, restart budget) to running elsewhere",
            metrics.failover_seconds.clone(),
        );
        registry.register("watchdog_pets", "Successful pets of the watchdog", metrics.watchdog_pets.clone());
        registry.register(
            "watchdog_errors",
            "Failed watchdog operations, by operation (arm, pet, disarm)",
            metrics.watchdog_errors.clone(),
        );
        registry.register(
            "build",
            "The clusterd version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION").to_owned())]),
        );
        Arc::new(Metrics { registry, ..metrics })
    }

    /// Counts one client request.
    pub(crate) fn client_request(&self, request: &'static str, result: &'static str, elapsed: Duration) {
        self.client_requests.get_or_create(&vec![("request", request.to_owned()), ("result", result.to_owned())]).inc();
        self.client_request_seconds
            .get_or_create(&vec![("request", request.to_owned())])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one alert hook run.
    pub(crate) fn alert_run(&self, hook: &str, result: &'static str, elapsed: Duration) {
        self.alert_runs.get_or_create(&vec![("hook", hook.to_owned()), ("result", result.to_owned())]).inc();
        self.alert_seconds.get_or_create(&vec![("hook", hook.to_owned())]).observe(elapsed.as_secs_f64());
    }

    pub(crate) fn alert_events_skipped(&self, count: u64) {
        self.alert_events_skipped.inc_by(count);
    }

    /// Wraps the fencer so that every fence run is counted.
    pub(crate) fn metered_fencer(self: &Arc<Self>, inner: Arc<dyn Fencer>) -> Arc<dyn Fencer> {
        Arc::new(MeteredFencer { inner, metrics: self.clone() })
    }

    /// Wraps the watchdog so that its pets and errors are counted and its state shown.
    pub(crate) fn metered_watchdog(self: &Arc<Self>, inner: Arc<dyn Watchdog>) -> Arc<dyn Watchdog> {
        *self.watchdog.lock().expect("watchdog lock") = Some(inner.clone());
        Arc::new(MeteredWatchdog { inner, metrics: self.clone() })
    }

    /// Observes newly applied events: transitions, phase durations, failover durations.
    fn observe_event(&self, event: &Event) {
        let Some(package) = &event.package else { return };
        let Some((from, to)) = event.what.split_once(" -> ") else {
            if event.what == "removed" {
                self.failovers.lock().expect("failovers lock").remove(package);
            }
            return;
        };
        // Changes of role of promotable packages (`replica -> promoting`) are not phases.
        let phases = ["stopped", "starting", "running", "stopping", "failed", "blocked"];
        if !phases.contains(&from) || !phases.contains(&to) {
            return;
        }
        self.transitions.get_or_create(&vec![("from", from.to_owned()), ("to", to.to_owned())]).inc();
        if let Some(phase_ms) = event.phase_ms {
            self.phase_seconds.get_or_create(&vec![("phase", from.to_owned())]).observe(phase_ms as f64 / 1_000.0);
        }
        let mut failovers = self.failovers.lock().expect("failovers lock");
        if cluster_model::alerts::classify(event).contains(&"failover") {
            failovers.entry(package.clone()).or_insert(event.at_ms);
        } else if to == Phase::Running.as_str() {
            if let Some(began) = failovers.remove(package) {
                self.failover_seconds.observe(event.at_ms.saturating_sub(began) as f64 / 1_000.0);
            }
        } else if to == Phase::Failed.as_str() || to == Phase::Blocked.as_str() {
            failovers.remove(package);
        }
    }

    /// The whole exposition: counters and histograms, gauges of the moment, process metrics.
    pub(crate) async fn render(&self, node: &ConsensusNode, engine: &Engine) -> String {
        let status = node.status().await;
        let leading = node.leadership().is_some();
        let view = leading.then(|| engine.view());
        let lease_remaining = engine.lease_remaining();
        let now_ms = crate::engine::wall_ms();
        let me = node.me().name.clone();
        let mut gauges = Registry::with_prefix("clusterd");

        let state_names = ["leader", "follower", "candidate", "learner", "shutdown"];
        let raft_state: Family<Labels, Gauge> = Family::default();
        for name in state_names {
            raft_state.get_or_create(&vec![("state", name.to_owned())]).set(i64::from(status.reporter_state == name));
        }
        gauges.register("raft_state", "This node's Raft state (1 for the current one)", raft_state);
        gauge(&mut gauges, "raft_leader", "1 if this node is the Raft leader", i64::from(leading));
        gauge(&mut gauges, "raft_has_leader", "1 if this node knows a leader", i64::from(status.leader.is_some()));
        gauge(
            &mut gauges,
            "raft_quorum",
            "1 if the leader heard from a quorum within the election timeout (as this node sees it)",
            i64::from(status.quorum),
        );
        gauge(&mut gauges, "raft_term", "Current Raft term", status.term as i64);
        for (name, help, value) in [
            ("raft_commit_index", "Highest log index known committed", status.commit_index),
            ("raft_applied_index", "Highest log index applied to the state machine here", status.applied_index),
            ("raft_last_log_index", "Highest log index in this node's log", status.last_log_index),
            ("raft_snapshot_index", "Log index of the last snapshot", status.snapshot_index),
        ] {
            gauge(&mut gauges, name, help, value.unwrap_or(0) as i64);
        }
        let members: Family<Labels, Gauge> = Family::default();
        for (name, role) in [("voter", NodeRole::Voter), ("learner", NodeRole::Learner)] {
            let count = status.nodes.iter().filter(|node| node.role == role).count();
            members.get_or_create(&vec![("role", name.to_owned())]).set(count as i64);
        }
        gauges.register("raft_members", "Members of the cluster by role", members);
        let peer_lag: Family<Labels, Gauge> = Family::default();
        let peer_match: Family<Labels, Gauge> = Family::default();
        let peer_contact: Family<Labels, FloatGauge> = Family::default();
        for peer in status.nodes.iter().filter(|peer| peer.name != me) {
            let labels = vec![("peer", peer.name.clone())];
            if leading {
                let matched = peer.matched_index.unwrap_or(0);
                peer_match.get_or_create(&labels).set(matched as i64);
                let last = status.last_log_index.unwrap_or(0);
                peer_lag.get_or_create(&labels).set(last.saturating_sub(matched) as i64);
            }
            if let Some(ms) = peer.last_contact_ms {
                peer_contact.get_or_create(&labels).set(ms as f64 / 1_000.0);
            }
        }
        gauges.register(
            "raft_peer_replication_lag_entries",
            "Leader only: entries of the leader's log not yet replicated to the peer",
            peer_lag,
        );
        gauges.register("raft_peer_match_index", "Leader only: highest log index replicated to the peer", peer_match);
        gauges.register(
            "raft_peer_last_contact_seconds",
            "Time since this node last heard from the peer (a follower knows only its leader)",
            peer_contact,
        );

        let remaining = lease_remaining.unwrap_or_default().as_secs_f64();
        let lease_left: FloatGauge = Gauge::default();
        lease_left.set(remaining);
        gauges.register(
            "lease_remaining_seconds",
            "Time left on this node's lease (0: none; its packages stop at the stop budget)",
            lease_left,
        );
        gauge(&mut gauges, "lease_valid", "1 if this node holds a valid lease", i64::from(lease_remaining.is_some()));
        if let Some(view) = &view {
            let leases: Family<Labels, Gauge> = Family::default();
            for (name, liveness) in &view.nodes {
                for (state, value) in
                    [("alive", Liveness::Alive), ("unknown", Liveness::Unknown), ("expired", Liveness::Expired)]
                {
                    leases
                        .get_or_create(&vec![("node", name.clone()), ("state", state.to_owned())])
                        .set(i64::from(*liveness == value));
                }
            }
            gauges.register(
                "node_lease",
                "Leader only: each node's lease as the leader sees it (1 for the current state)",
                leases,
            );
        }

        let (packages, nodes, hooks, backlog) = node.read_local(|state| {
            let packages: Vec<PackageGauges> = state
                .packages
                .iter()
                .map(|(key, package)| PackageGauges {
                    name: key.clone(),
                    phase: package.phase,
                    role: package.def.promotable.as_ref().map(|_| package.role),
                    owner: package.owner.clone(),
                    epoch: package.epoch,
                    restarts: package.restarts,
                    failures: package.failures.keys().map(|node| package.recent_failures(node, now_ms)).sum(),
                    frozen: package.frozen,
                    desired_running: package.desired == cluster_model::Desired::Running,
                })
                .collect();
            let nodes: Vec<(String, bool, bool, &'static str)> = status
                .nodes
                .iter()
                .map(|member| {
                    let record = state.nodes.get(&member.name);
                    let protection = cluster_model::controller::protection(state, &member.name).as_str();
                    (
                        member.name.clone(),
                        record.is_some_and(|r| r.standby),
                        record.is_some_and(|r| r.leaving),
                        protection,
                    )
                })
                .collect();
            (packages, nodes, state.alerts.hooks.len(), state.next_event.saturating_sub(state.alerts.next))
        });
        let phase: Family<Labels, Gauge> = Family::default();
        let owner: Family<Labels, Gauge> = Family::default();
        let epoch: Family<Labels, Gauge> = Family::default();
        let restarts: Family<Labels, Gauge> = Family::default();
        let failures: Family<Labels, Gauge> = Family::default();
        let frozen: Family<Labels, Gauge> = Family::default();
        let desired: Family<Labels, Gauge> = Family::default();
        let roles: Family<Labels, Gauge> = Family::default();
        let phases = [Phase::Stopped, Phase::Starting, Phase::Running, Phase::Stopping, Phase::Failed, Phase::Blocked];
        for package in &packages {
            let labels = vec![("package", package.name.clone())];
            for candidate in phases {
                phase
                    .get_or_create(&vec![("package", package.name.clone()), ("phase", candidate.as_str().to_owned())])
                    .set(i64::from(package.phase == candidate));
            }
            if let Some(node) = &package.owner {
                owner.get_or_create(&vec![("package", package.name.clone()), ("owner", node.clone())]).set(1);
            }
            epoch.get_or_create(&labels).set(package.epoch as i64);
            restarts.get_or_create(&labels).set(i64::from(package.restarts));
            failures.get_or_create(&labels).set(package.failures as i64);
            frozen.get_or_create(&labels).set(i64::from(package.frozen));
            desired.get_or_create(&labels).set(i64::from(package.desired_running));
            if let Some(role) = package.role {
                use cluster_model::Role;
                for candidate in [Role::Replica, Role::Promoting, Role::Primary, Role::Demoting] {
                    roles
                        .get_or_create(&vec![
                            ("package", package.name.clone()),
                            ("role", candidate.as_str().to_owned()),
                        ])
                        .set(i64::from(role == candidate));
                }
            }
        }
        gauges.register("package_phase", "Each package's phase (1 for the current one)", phase);
        gauges.register(
            "package_role",
            "Each instance of a promotable package: its role (1 for the current one)",
            roles,
        );
        gauges.register("package_owner", "Each package's owner (1; no series while it has none)", owner);
        gauges.register("package_epoch", "Each package's epoch (its fencing token; +1 per owner change)", epoch);
        gauges.register("package_restarts", "Local restarts of the package at its current owner", restarts);
        gauges.register(
            "package_recent_failures",
            "Failures of the package within its restart window, on every node",
            failures,
        );
        gauges.register("package_frozen", "1 if the package is frozen (maintenance)", frozen);
        gauges.register("package_desired_running", "1 if the package should run, 0 if stopped", desired);

        let standby: Family<Labels, Gauge> = Family::default();
        let leaving: Family<Labels, Gauge> = Family::default();
        let protection: Family<Labels, Gauge> = Family::default();
        for (name, is_standby, is_leaving, protected_by) in &nodes {
            standby.get_or_create(&vec![("node", name.clone())]).set(i64::from(*is_standby));
            leaving.get_or_create(&vec![("node", name.clone())]).set(i64::from(*is_leaving));
            for kind in ["watchdog", "fencing", "lease-only"] {
                protection
                    .get_or_create(&vec![("node", name.clone()), ("protection", kind.to_owned())])
                    .set(i64::from(*protected_by == kind));
            }
        }
        gauges.register("node_standby", "1 if the node is in standby (drained)", standby);
        gauges.register("node_leaving", "1 if the node's clusterd is stopping or stopped cleanly", leaving);
        gauges.register(
            "node_protection",
            "How each node is protected against pauses (1 for the current one; lease-only is unprotected)",
            protection,
        );

        let watchdog = self.watchdog.lock().expect("watchdog lock").clone();
        gauge(
            &mut gauges,
            "watchdog_configured",
            "1 if this node has a watchdog device",
            i64::from(watchdog.is_some()),
        );
        let armed = watchdog.as_ref().is_some_and(|w| w.is_armed());
        gauge(
            &mut gauges,
            "watchdog_armed",
            "1 while this node's watchdog is armed (it runs packages)",
            i64::from(armed),
        );
        let timeout: FloatGauge = Gauge::default();
        timeout.set(watchdog.as_ref().and_then(|w| w.timeout()).unwrap_or_default().as_secs_f64());
        gauges.register("watchdog_timeout_seconds", "The armed watchdog's timeout (0 when disarmed)", timeout);

        gauge(&mut gauges, "alert_hooks", "Alert hooks configured", hooks as i64);
        if leading {
            gauge(&mut gauges, "alert_backlog_events", "Leader only: events whose alert hooks have not run yet", {
                if hooks == 0 {
                    0
                } else {
                    backlog as i64
                }
            });
        }

        let mut process = Registry::default();
        process_metrics(&mut process, self.started);

        let mut text = String::new();
        let encoded = encode_registry(&mut text, &self.registry)
            .and_then(|()| encode_registry(&mut text, &gauges))
            .and_then(|()| encode_registry(&mut text, &process))
            .and_then(|()| encode_eof(&mut text));
        if let Err(err) = encoded {
            tracing::error!(error = %err, "cannot encode the metrics");
        }
        text
    }
}

struct PackageGauges {
    /// The instance's key (`web`, `db:1`).
    name: String,
    phase: Phase,
    /// Promotable packages: the instance's role.
    role: Option<cluster_model::Role>,
    owner: Option<String>,
    epoch: u64,
    restarts: u32,
    failures: usize,
    frozen: bool,
    desired_running: bool,
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let metric: Gauge = Gauge::default();
    metric.set(value);
    registry.register(name, help, metric);
}

/// The standard `process_*` metrics of Prometheus' client libraries, from /proc/self.
fn process_metrics(registry: &mut Registry, started: SystemTime) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse::<u64>().ok())
    };
    if let Some(kib) = field("VmRSS:") {
        gauge(registry, "process_resident_memory_bytes", "Resident memory size in bytes", (kib * 1_024) as i64);
    }
    if let Some(kib) = field("VmSize:") {
        gauge(registry, "process_virtual_memory_bytes", "Virtual memory size in bytes", (kib * 1_024) as i64);
    }
    if let Some(threads) = field("Threads:") {
        gauge(registry, "process_threads", "Threads of the process", threads as i64);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge(registry, "process_open_fds", "Open file descriptors", fds.count() as i64);
    }
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    if let Some(rest) = stat.rsplit_once(") ").map(|(_, rest)| rest) {
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |index: usize| fields.get(index - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
        let cpu: Counter<f64, AtomicU64> = Counter::default();
        cpu.inc_by((ticks(14) + ticks(15)) as f64 / per_second);
        registry.register("process_cpu_seconds", "User and system CPU time spent, in seconds", cpu);
    }
    let start: FloatGauge = Gauge::default();
    start.set(started.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64());
    registry.register("process_start_time_seconds", "Start time of the process since the Unix epoch", start);
}

/// The same exposition in Prometheus' classic text format (0.0.4), for clients that do not ask
/// for OpenMetrics (curl, promtool, older scrapers): no `# EOF`, counter and info families named
/// like their samples (`x_total`, `x_info`), info as a gauge. Samples are unchanged.
pub(crate) fn to_classic_text(openmetrics: &str) -> String {
    let mut text = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ').or(Some((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "stateset" | "gaugehistogram" | "unknown" => (name.to_owned(), "untyped"),
                other => (name.to_owned(), other),
            };
            if let Some((_, description)) = help.take() {
                text.push_str(&format!("# HELP {name} {description}\n"));
            }
            text.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// Follows the applied event history for the transition counters and the duration histograms.
/// Only events applied after the daemon started are counted (a restart does not count the
/// retained history again). Wakes only when an entry is applied.
pub(crate) async fn follow_events(node: Arc<ConsensusNode>, metrics: Arc<Metrics>) {
    let mut next = node.read_local(|state| state.next_event);
    loop {
        let applied = node.applied_index();
        node.wait_applied_after(applied, Duration::from_secs(60)).await;
        let events: Vec<Event> = node.read_local(|state| {
            if state.next_event <= next {
                return Vec::new();
            }
            state.events.iter().filter(|event| event.seq >= next).cloned().collect()
        });
        for event in &events {
            metrics.observe_event(event);
            next = event.seq + 1;
        }
    }
}

impl ActionObserver for Metrics {
    fn action(&self, kind: &'static str, action: Action, elapsed: Duration, result: &str) {
        let action = action.name().to_owned();
        self.agent_actions
            .get_or_create(&vec![("type", kind.to_owned()), ("action", action.clone()), ("result", result.to_owned())])
            .inc();
        self.agent_action_seconds
            .get_or_create(&vec![("type", kind.to_owned()), ("action", action)])
            .observe(elapsed.as_secs_f64());
    }
}

/// Counts fence runs around the real fencer.
struct MeteredFencer {
    inner: Arc<dyn Fencer>,
    metrics: Arc<Metrics>,
}

#[async_trait::async_trait]
impl Fencer for MeteredFencer {
    async fn fence(
        &self,
        device: &FenceDevice,
        node: &str,
        action: FenceAction,
        timeout: Duration,
    ) -> Result<(), FenceError> {
        let began = Instant::now();
        let result = self.inner.fence(device, node, action, timeout).await;
        let outcome = match &result {
            Ok(()) => "success",
            Err(FenceError::TimedOut { .. }) => "timeout",
            Err(_) => "failed",
        };
        let labels = vec![("node", node.to_owned()), ("action", action.to_string()), ("result", outcome.to_owned())];
        self.metrics.fence_actions.get_or_create(&labels).inc();
        self.metrics
            .fence_seconds
            .get_or_create(&vec![("action", action.to_string())])
            .observe(began.elapsed().as_secs_f64());
        result
    }
}

/// Counts pets and errors around the real watchdog.
struct MeteredWatchdog {
    inner: Arc<dyn Watchdog>,
    metrics: Arc<Metrics>,
}

impl MeteredWatchdog {
    fn count<T>(&self, operation: &'static str, result: Result<T, WatchdogError>) -> Result<T, WatchdogError> {
        if result.is_err() {
            self.metrics.watchdog_errors.get_or_create(&vec![("operation", operation.to_owned())]).inc();
        }
        result
    }
}

impl Watchdog for MeteredWatchdog {
    fn arm(&self, timeout: Duration) -> Result<(), WatchdogError> {
        self.count("arm", self.inner.arm(timeout))
    }

    fn pet(&self) -> Result<(), WatchdogError> {
        let result = self.count("pet", self.inner.pet());
        if result.is_ok() {
            self.metrics.watchdog_pets.inc();
        }
        result
    }

    fn disarm(&self) -> Result<(), WatchdogError> {
        self.count("disarm", self.inner.disarm())
    }

    fn is_armed(&self) -> bool {
        self.inner.is_armed()
    }

    fn timeout(&self) -> Option<Duration> {
        self.inner.timeout()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn shortest_timeout(&self) -> Duration {
        self.inner.shortest_timeout()
    }
}

/// The metric label of a client request.
pub(crate) fn request_name(request: &ClientRequest) -> &'static str {
    #[allow(unreachable_patterns)]
    match request {
        ClientRequest::KvGet { .. } => "kv_get",
        ClientRequest::KvSet { .. } => "kv_set",
        ClientRequest::KvCas { .. } => "kv_cas",
        ClientRequest::KvDel { .. } => "kv_del",
        ClientRequest::KvList { .. } => "kv_list",
        ClientRequest::Status => "status",
        ClientRequest::Events { .. } => "events",
        ClientRequest::SettingsGet => "settings_get",
        ClientRequest::SettingsSet { .. } => "settings_set",
        ClientRequest::PkgApply { .. } => "pkg_apply",
        ClientRequest::PkgStatus { .. } => "pkg_status",
        ClientRequest::PkgPlan { .. } => "pkg_plan",
        ClientRequest::PkgRun { .. }
        | ClientRequest::PkgStop { .. }
        | ClientRequest::PkgMove { .. }
        | ClientRequest::PkgFreeze { .. }
        | ClientRequest::PkgCleanup { .. }
        | ClientRequest::PkgRemove { .. } => "pkg_operation",
        ClientRequest::NodeAdd { .. }
        | ClientRequest::NodeRemove { .. }
        | ClientRequest::NodePromote { .. }
        | ClientRequest::ClusterInit
        | ClientRequest::TransferLeader { .. } => "membership",
        ClientRequest::NodeStandby { .. } => "node_standby",
        ClientRequest::FenceSet { .. } | ClientRequest::FenceRemove { .. } => "fence_config",
        ClientRequest::AlertSet { .. } | ClientRequest::AlertList => "alerts",
        ClientRequest::Diagnostics { .. } => "diagnostics",
        _ => "other",
    }
}

/// The metric label of a client reply: `ok` or the error kind.
pub(crate) fn result_name(response: &Response) -> &'static str {
    match response {
        Response::Client(Ok(_)) | Response::Peer(Ok(_)) => "ok",
        Response::Client(Err(err)) => match err.kind {
            cluster_api::ErrorKind::Failed => "failed",
            cluster_api::ErrorKind::Invalid => "invalid",
            cluster_api::ErrorKind::NotFound => "not_found",
            cluster_api::ErrorKind::CasMismatch => "cas_mismatch",
            cluster_api::ErrorKind::NoLeader => "no_leader",
            cluster_api::ErrorKind::NotLeader => "not_leader",
        },
        Response::Peer(Err(_)) => "failed",
    }
}

/// Counts requests of a listener; shared by the TLS and Unix listeners.
#[derive(Clone, Debug)]
pub(crate) struct RequestMeter(pub(crate) Option<Arc<Metrics>>);

impl RequestMeter {
    pub(crate) fn record(&self, request: &'static str, response: &Response, elapsed: Duration) {
        if let Some(metrics) = &self.0 {
            metrics.client_request(request, result_name(response), elapsed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, at_ms: u64, what: &str, reason: &str, phase_ms: Option<u64>) -> Event {
        Event {
            seq,
            at_ms,
            package: Some("web".into()),
            node: Some("n2".into()),
            epoch: 2,
            what: what.into(),
            reason: reason.into(),
            phase_ms,
        }
    }

    #[test]
    fn a_failover_is_timed_from_leaving_the_failed_node_to_running_elsewhere() {
        let metrics = Metrics::new();
        metrics.observe_event(&event(
            1,
            10_000,
            "running -> starting",
            "node n1 lost its lease (lease-only)",
            Some(60_000),
        ));
        metrics.observe_event(&event(2, 10_700, "starting -> running", "all resources started", Some(700)));
        // A later ordinary restart is not a failover.
        metrics.observe_event(&event(3, 20_000, "running -> starting", "resource p failed (x); local restart 1", None));
        metrics.observe_event(&event(4, 20_300, "starting -> running", "all resources started", Some(300)));
        let mut text = String::new();
        encode_registry(&mut text, &metrics.registry).unwrap();
        assert!(text.contains("clusterd_package_failover_duration_seconds_count 1\n"), "{text}");
        assert!(text.contains("clusterd_package_failover_duration_seconds_sum 0.7\n"), "{text}");
        assert!(text.contains("clusterd_package_transitions_total{from=\"starting\",to=\"running\"} 2\n"), "{text}");
        assert!(text.contains("clusterd_package_phase_duration_seconds_count{phase=\"running\"} 1\n"), "{text}");
    }

    #[test]
    fn the_classic_text_format_names_counters_and_info_like_their_samples() {
        let openmetrics = "# HELP clusterd_x Things.\n# TYPE clusterd_x counter\nclusterd_x_total{a=\"b\"} 2\n\
                           # HELP clusterd_build The version.\n# TYPE clusterd_build info\n\
                           clusterd_build_info{version=\"0.1.0\"} 1\n# HELP clusterd_g A gauge.\n\
                           # TYPE clusterd_g gauge\nclusterd_g 3\n# EOF\n";
        assert_eq!(
            to_classic_text(openmetrics),
            "# HELP clusterd_x_total Things.\n# TYPE clusterd_x_total counter\nclusterd_x_total{a=\"b\"} 2\n\
             # HELP clusterd_build_info The version.\n# TYPE clusterd_build_info gauge\n\
             clusterd_build_info{version=\"0.1.0\"} 1\n# HELP clusterd_g A gauge.\n# TYPE clusterd_g gauge\n\
             clusterd_g 3\n"
        );
    }

    #[test]
    fn request_names_are_few_and_stable() {
        assert_eq!(request_name(&ClientRequest::KvGet { key: "k".into() }), "kv_get");
        assert_eq!(request_name(&ClientRequest::PkgStop { name: "web".into() }), "pkg_operation");
    }
}
