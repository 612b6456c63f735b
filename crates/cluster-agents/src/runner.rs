//! The ordered package runner: start in file order, stop in reverse, roll back a failed start, collect
//! every error. This is what the failover engine calls.
//!
//! ```text
//!   start(epoch):  r1.start ─► r2.start ─► r3.start ✗ ─► r3.stop ─► r2.stop ─► r1.stop ─► Err(StartFailed)
//!   stop(epoch):   r3.stop ─► r2.stop ─► r1.stop      (every stop tried; Err(StopFailed) lists all failures)
//!   probe(epoch):  monitor of every resource, before acting (adopt what already runs)
//!
//!   promotable packages (`promotable`): start and stop skip the primary-only resources (a VIP);
//!   promote(epoch): in file order, `promote` of the promoted resources, `start` of the primary-only ones
//!   demote(epoch):  in reverse, `stop` of the primary-only resources, `demote` of the promoted ones
//!   a stop demotes what may be promoted first (Pacemaker demotes before it stops)
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cluster_host::Host;
use cluster_package::{Instances, PackageDef, ResourceDef, ResourceKind};
use tokio::time::Instant;

use crate::agent::{timed, Action, ActionContext, Agent, MonitorState};
use crate::status::{AgentError, OcfStatus};
use crate::AgentOptions;

/// One resource's failed action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceFailure {
    /// The resource.
    pub resource: String,
    /// The action.
    pub action: Action,
    /// What went wrong.
    pub error: AgentError,
}

impl std::fmt::Display for ResourceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of resource {}: {}", self.action.name(), self.resource, self.error)
    }
}

fn list(failures: &[ResourceFailure]) -> String {
    failures.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Why a package action failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// An assignment older than one already seen: an owner never acts on it.
    #[error("refusing to start package {package} at epoch {given}: epoch {seen} was already seen")]
    StaleEpoch {
        /// The package.
        package: String,
        /// The epoch given.
        given: u64,
        /// The highest epoch seen.
        seen: u64,
    },
    /// A resource failed to start; what had started was stopped again (rollback failures listed).
    #[error("package {package}: {failure}{}", if rollback_failures.is_empty() { String::new() } else { format!("; rollback also failed: {}", list(rollback_failures)) })]
    StartFailed {
        /// The package.
        package: String,
        /// The failed start.
        failure: ResourceFailure,
        /// Stops that failed during the rollback: the package is then not cleanly down.
        rollback_failures: Vec<ResourceFailure>,
    },
    /// One or more resources failed to stop (every stop was still tried).
    #[error("package {package}: stop failed: {}", list(failures))]
    StopFailed {
        /// The package.
        package: String,
        /// Every failed stop, in stop order.
        failures: Vec<ResourceFailure>,
    },
    /// No resource of that name in the package.
    #[error("package {package} has no resource {resource}")]
    UnknownResource {
        /// The package.
        package: String,
        /// The name asked for.
        resource: String,
    },
}

impl RunError {
    /// True when the package may still be (partly) active: a stop failed, here or during rollback.
    /// The engine must then not start it elsewhere without fencing (DESIGN §5).
    pub fn leaves_resources_active(&self) -> bool {
        match self {
            RunError::StartFailed { rollback_failures, .. } => !rollback_failures.is_empty(),
            RunError::StopFailed { .. } => true,
            RunError::StaleEpoch { .. } | RunError::UnknownResource { .. } => false,
        }
    }
}

/// A successful action of one resource and how long it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceOutcome {
    /// The resource.
    pub resource: String,
    /// How long the action took.
    pub elapsed: Duration,
}

/// What a probe found for one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// The resource.
    pub resource: String,
    /// Its state, or the monitor's error.
    pub state: Result<MonitorState, AgentError>,
    /// Started only on a promoted instance (`promotable.primary_only`).
    pub primary_only: bool,
}

/// What a resource does in a promotable package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Started and stopped with the instance (every resource of other packages).
    Always,
    /// Started with the instance, promoted and demoted with its role (`promotable.promote`).
    Promoted,
    /// Started on promotion only, stopped before a demotion (`promotable.primary_only`).
    PrimaryOnly,
}

struct Entry {
    definition: Option<ResourceDef>,
    agent: Box<dyn Agent>,
    part: Part,
    /// More environment for this resource's actions (instance, clone and promotion attributes).
    environment: BTreeMap<String, String>,
    /// A promoted resource may be promoted now: set when a promotion begins (or a probe finds it
    /// promoted), cleared when a demotion or stop succeeds.
    promoted: AtomicBool,
    /// Where its agent's promotion score lands (`crm_master` shim).
    score_file: Option<PathBuf>,
}

impl Entry {
    fn plain(definition: Option<ResourceDef>, agent: Box<dyn Agent>) -> Entry {
        Entry {
            definition,
            agent,
            part: Part::Always,
            environment: BTreeMap::new(),
            promoted: AtomicBool::new(false),
            score_file: None,
        }
    }
}

/// Runs one package's resources in order.
pub struct PackageRunner {
    package: String,
    resources: Vec<Entry>,
    highest_epoch: AtomicU64,
}

/// A promotion score as an agent writes it: an integer, or Pacemaker's `INFINITY` / `-INFINITY`
/// (taken as ±1,000,000, Pacemaker's own value).
pub fn parse_promotion_score(text: &str) -> Option<i64> {
    match text.trim() {
        "INFINITY" | "+INFINITY" => Some(1_000_000),
        "-INFINITY" => Some(-1_000_000),
        other => other.parse::<i64>().ok().map(|score| score.clamp(-1_000_000, 1_000_000)),
    }
}

impl std::fmt::Debug for PackageRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackageRunner")
            .field("package", &self.package)
            .field("resources", &self.resource_names())
            .finish()
    }
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

impl PackageRunner {
    /// A runner for `package`, its agents built by [`crate::build_agent`] against `host`.
    pub fn new(package: &PackageDef, host: &Host, options: &AgentOptions) -> Self {
        PackageRunner::for_instance(package, &package.name, host, options)
    }

    /// A runner for instance `instance` (`db:1`, or the package's name) of `package`. Its actions
    /// get `CLUSTER_INSTANCE`; OCF agents of a package with several instances also get Pacemaker's
    /// clone meta attributes (`OCF_RESKEY_CRM_meta_clone`, `_clone_max`, `_clone_node_max`, and for
    /// promotable packages `_promoted_max`, `_promoted_node_max` and their older `master_` names),
    /// and the promoted ones the `crm_master` / `crm_attribute` stand-in of `options.promotion_dir`.
    pub fn for_instance(package: &PackageDef, instance: &str, host: &Host, options: &AgentOptions) -> Self {
        let resources = package
            .resources
            .iter()
            .map(|definition| {
                let mut entry =
                    Entry::plain(Some(definition.clone()), crate::build_agent_with(definition, host, options));
                entry.part = if package.primary_only(&definition.name) {
                    Part::PrimaryOnly
                } else if package.promoted_with_instance(&definition.name) {
                    Part::Promoted
                } else {
                    Part::Always
                };
                entry.environment.insert("CLUSTER_INSTANCE".into(), instance.to_owned());
                if matches!(definition.kind, ResourceKind::Ocf(_)) {
                    entry.environment.extend(ocf_meta_attributes(package, instance, options));
                }
                if let (Part::Promoted, Some(directory)) = (entry.part, &options.promotion_dir) {
                    let score_file = directory.join("scores").join(format!("{instance}.{}", definition.name));
                    entry.environment.extend(crate::promotion::environment(directory, &score_file));
                    entry.score_file = Some(score_file);
                }
                entry
            })
            .collect();
        PackageRunner { package: package.name.clone(), resources, highest_epoch: AtomicU64::new(0) }
    }

    /// A runner over ready-made agents (default 20 s timeouts), for tests and custom agents.
    pub fn from_agents(package: impl Into<String>, agents: Vec<Box<dyn Agent>>) -> Self {
        let resources = agents.into_iter().map(|agent| Entry::plain(None, agent)).collect();
        PackageRunner { package: package.into(), resources, highest_epoch: AtomicU64::new(0) }
    }

    /// Whether the monitor of `resource` runs: a primary-only resource runs (and is watched) only
    /// on a promoted instance.
    pub fn monitored(&self, resource: &str, promoted: bool) -> bool {
        promoted || self.entry(resource).is_ok_and(|entry| entry.part != Part::PrimaryOnly)
    }

    /// Whether a resource may be promoted here now.
    pub fn promoted(&self) -> bool {
        self.resources.iter().any(|entry| entry.promoted.load(Ordering::SeqCst))
    }

    /// The instance's promotion score, as its agents set it (`crm_master -v N`): the lowest of its
    /// promoted resources' scores, `None` while one of them has none (an instance is promoted only
    /// once every agent that promotes says it may be).
    pub fn promotion_score(&self) -> Option<i64> {
        let mut lowest: Option<i64> = None;
        let mut any = false;
        for entry in self.resources.iter().filter(|entry| entry.part == Part::Promoted) {
            any = true;
            let file = entry.score_file.as_ref()?;
            let score = std::fs::read_to_string(file).ok().and_then(|text| parse_promotion_score(&text))?;
            lowest = Some(lowest.map_or(score, |low| low.min(score)));
        }
        if any {
            lowest
        } else {
            None
        }
    }

    /// The package name.
    pub fn package(&self) -> &str {
        &self.package
    }

    /// Resource names in start order.
    pub fn resource_names(&self) -> Vec<&str> {
        self.resources.iter().map(|entry| entry.agent.name()).collect()
    }

    fn context(&self, entry: &Entry, action: Action, epoch: u64) -> ActionContext {
        let (timeout, interval, depth) = match (&entry.definition, action) {
            (Some(definition), Action::Start) => (definition.start_timeout, Duration::ZERO, 0),
            (Some(definition), Action::Stop) => (definition.stop_timeout, Duration::ZERO, 0),
            (Some(definition), Action::Monitor) => {
                (definition.monitor.timeout, definition.monitor.interval, definition.monitor.depth)
            }
            // A promotion is given the start's time, a demotion the stop's.
            (Some(definition), Action::Promote) => (definition.start_timeout, Duration::ZERO, 0),
            (Some(definition), Action::Demote) => (definition.stop_timeout, Duration::ZERO, 0),
            _ => (DEFAULT_TIMEOUT, Duration::ZERO, 0),
        };
        ActionContext {
            package: self.package.clone(),
            epoch,
            timeout,
            interval,
            depth,
            environment: entry.environment.clone(),
        }
    }

    /// Records `epoch` as seen (an action with an older one is refused); the highest seen.
    pub fn see_epoch(&self, epoch: u64) -> u64 {
        self.highest_epoch.fetch_max(epoch, Ordering::SeqCst).max(epoch)
    }

    /// The highest epoch of an action this runner was given (or told of by [`Self::see_epoch`]).
    pub fn epoch_seen(&self) -> u64 {
        self.highest_epoch.load(Ordering::SeqCst)
    }

    async fn stop_entry(&self, entry: &Entry, epoch: u64) -> Result<(), ResourceFailure> {
        // A promoted resource is demoted before it stops (an OCF agent may refuse to stop it promoted).
        if entry.part == Part::Promoted && entry.promoted.load(Ordering::SeqCst) {
            self.demote_entry(entry, epoch).await?;
        }
        let context = self.context(entry, Action::Stop, epoch);
        timed(entry.agent.name(), Action::Stop, context.timeout, entry.agent.stop(&context)).await.map_err(
            |error| ResourceFailure { resource: entry.agent.name().to_string(), action: Action::Stop, error },
        )?;
        entry.promoted.store(false, Ordering::SeqCst);
        Ok(())
    }

    async fn demote_entry(&self, entry: &Entry, epoch: u64) -> Result<(), ResourceFailure> {
        let context = self.context(entry, Action::Demote, epoch);
        timed(entry.agent.name(), Action::Demote, context.timeout, entry.agent.demote(&context)).await.map_err(
            |error| ResourceFailure { resource: entry.agent.name().to_string(), action: Action::Demote, error },
        )?;
        entry.promoted.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Promotes the instance: in file order, `promote` of the promoted resources and `start` of the
    /// primary-only ones. On a failure, what was done is undone in reverse (a failed undo is listed:
    /// the resources may then still be promoted). Refuses an epoch older than one already seen.
    pub async fn promote(&self, epoch: u64) -> Result<Vec<ResourceOutcome>, RunError> {
        let seen = self.see_epoch(epoch);
        if epoch < seen {
            return Err(RunError::StaleEpoch { package: self.package.clone(), given: epoch, seen });
        }
        let mut outcomes = Vec::new();
        let involved: Vec<&Entry> = self.resources.iter().filter(|entry| entry.part != Part::Always).collect();
        for (index, entry) in involved.iter().enumerate() {
            let action = if entry.part == Part::Promoted { Action::Promote } else { Action::Start };
            let context = self.context(entry, action, epoch);
            let began = Instant::now();
            // Counted promoted from the first instant of its promotion.
            entry.promoted.store(true, Ordering::SeqCst);
            let result = match action {
                Action::Promote => {
                    timed(entry.agent.name(), action, context.timeout, entry.agent.promote(&context)).await
                }
                _ => timed(entry.agent.name(), action, context.timeout, entry.agent.start(&context)).await,
            };
            match result {
                Ok(()) => outcomes
                    .push(ResourceOutcome { resource: entry.agent.name().to_string(), elapsed: began.elapsed() }),
                Err(error) => {
                    tracing::warn!(package = %self.package, resource = entry.agent.name(), %error, "promotion failed, undoing it");
                    let failure = ResourceFailure { resource: entry.agent.name().to_string(), action, error };
                    let mut rollback_failures = Vec::new();
                    for entry in involved[..=index].iter().rev() {
                        let undone = match entry.part {
                            Part::Promoted => self.demote_entry(entry, epoch).await,
                            _ => self.stop_entry(entry, epoch).await,
                        };
                        if let Err(failure) = undone {
                            rollback_failures.push(failure);
                        }
                    }
                    return Err(RunError::StartFailed { package: self.package.clone(), failure, rollback_failures });
                }
            }
        }
        Ok(outcomes)
    }

    /// Demotes the instance: in reverse file order, `stop` of the primary-only resources and
    /// `demote` of the promoted ones, trying every step; a failure leaves it possibly promoted.
    pub async fn demote(&self, epoch: u64) -> Result<Vec<ResourceOutcome>, RunError> {
        self.see_epoch(epoch);
        self.undo_each(self.resources.iter().rev().filter(|entry| entry.part != Part::Always), true, epoch).await
    }

    /// Undoes each of `entries` in turn (a `demote` of a promoted resource when `demoting`, else a
    /// `stop`), trying every one even after a failure: the outcomes, or every failure.
    async fn undo_each<'e>(
        &self,
        entries: impl Iterator<Item = &'e Entry>,
        demoting: bool,
        epoch: u64,
    ) -> Result<Vec<ResourceOutcome>, RunError> {
        let mut failures = Vec::new();
        let mut outcomes = Vec::new();
        for entry in entries {
            let began = Instant::now();
            let done = match entry.part {
                Part::Promoted if demoting => self.demote_entry(entry, epoch).await,
                _ => self.stop_entry(entry, epoch).await,
            };
            match done {
                Ok(()) => outcomes
                    .push(ResourceOutcome { resource: entry.agent.name().to_string(), elapsed: began.elapsed() }),
                Err(failure) => failures.push(failure),
            }
        }
        if failures.is_empty() {
            Ok(outcomes)
        } else {
            Err(RunError::StopFailed { package: self.package.clone(), failures })
        }
    }

    /// Start every resource in order. On a failure, stop the failed resource and every one already
    /// started, in reverse order, and return every error. Refuses an epoch older than one already seen.
    pub async fn start(&self, epoch: u64) -> Result<Vec<ResourceOutcome>, RunError> {
        let seen = self.see_epoch(epoch);
        if epoch < seen {
            return Err(RunError::StaleEpoch { package: self.package.clone(), given: epoch, seen });
        }
        let mut outcomes = Vec::new();
        for (index, entry) in self.resources.iter().enumerate() {
            if entry.part == Part::PrimaryOnly {
                // Started by a promotion (stopped by the rollback below all the same: idempotent).
                continue;
            }
            let context = self.context(entry, Action::Start, epoch);
            let began = Instant::now();
            let result = timed(entry.agent.name(), Action::Start, context.timeout, entry.agent.start(&context)).await;
            match result {
                Ok(()) => outcomes
                    .push(ResourceOutcome { resource: entry.agent.name().to_string(), elapsed: began.elapsed() }),
                Err(error) => {
                    tracing::warn!(package = %self.package, resource = entry.agent.name(), %error, "start failed, rolling back");
                    let failure =
                        ResourceFailure { resource: entry.agent.name().to_string(), action: Action::Start, error };
                    let mut rollback_failures = Vec::new();
                    // The failed resource may be half up: stop it too, then the others in reverse.
                    for entry in self.resources[..=index].iter().rev() {
                        if let Err(failure) = self.stop_entry(entry, epoch).await {
                            rollback_failures.push(failure);
                        }
                    }
                    return Err(RunError::StartFailed { package: self.package.clone(), failure, rollback_failures });
                }
            }
        }
        Ok(outcomes)
    }

    /// Stop every resource in reverse order, trying every stop even after a failure.
    /// Stopping is always allowed, whatever the epoch (it can only make the cluster safer).
    pub async fn stop(&self, epoch: u64) -> Result<Vec<ResourceOutcome>, RunError> {
        self.stop_from(0, epoch).await
    }

    /// Stop the resources from position `first` (in start order) to the last, in reverse order,
    /// trying every stop; the ones before `first` stay as they are (a redefined resource is
    /// restarted with every later one, as in an ordered group).
    pub async fn stop_from(&self, first: usize, epoch: u64) -> Result<Vec<ResourceOutcome>, RunError> {
        self.see_epoch(epoch);
        self.undo_each(self.resources.iter().skip(first).rev(), false, epoch).await
    }

    /// Monitor every resource (in start order) without acting: what is running now. A resource found
    /// promoted counts as promoted (a stop demotes it first). Primary-only resources are left out
    /// (`ProbeResult::primary_only`): they run on a promoted instance only.
    pub async fn probe(&self, epoch: u64) -> Vec<ProbeResult> {
        let mut results = Vec::new();
        for entry in &self.resources {
            let context = self.context(entry, Action::Monitor, epoch);
            let state =
                timed(entry.agent.name(), Action::Monitor, context.timeout, entry.agent.monitor(&context)).await;
            let promoted = match entry.part {
                Part::Promoted => matches!(state, Ok(MonitorState::RunningPromoted)),
                Part::PrimaryOnly => matches!(state, Ok(MonitorState::Running | MonitorState::RunningPromoted)),
                Part::Always => false,
            };
            if promoted {
                entry.promoted.store(true, Ordering::SeqCst);
            }
            let primary_only = entry.part == Part::PrimaryOnly;
            results.push(ProbeResult { resource: entry.agent.name().to_string(), state, primary_only });
        }
        results
    }

    /// Why `state`, what a monitor of `resource` found, is a failure, if it is: not running; or a
    /// promoted resource promoted while the instance is not (something promoted it behind the
    /// cluster's back: it is stopped, demoted first), or not promoted while the instance is.
    pub fn monitor_failure(&self, resource: &str, state: MonitorState) -> Option<String> {
        let entry = self.entry(resource).ok()?;
        let promoted = entry.promoted.load(Ordering::SeqCst);
        match (state, entry.part) {
            (MonitorState::NotRunning, _) => Some("not running".into()),
            (MonitorState::RunningPromoted, Part::Promoted) if !promoted => {
                entry.promoted.store(true, Ordering::SeqCst);
                Some("promoted, but this instance is not promoted here".into())
            }
            (MonitorState::Running, Part::Promoted) if promoted => {
                Some("no longer promoted (OCF_SUCCESS where OCF_RUNNING_PROMOTED was expected)".into())
            }
            _ => None,
        }
    }

    /// Monitor one resource with its monitor timeout and depth. An unknown resource is OCF_ERR_ARGS.
    pub async fn monitor(&self, resource: &str, epoch: u64) -> Result<MonitorState, AgentError> {
        let entry = self.entry(resource).map_err(|error| AgentError::new(OcfStatus::ErrArgs, error.to_string()))?;
        let context = self.context(entry, Action::Monitor, epoch);
        timed(resource, Action::Monitor, context.timeout, entry.agent.monitor(&context)).await
    }

    /// Validate every resource; every failure is returned.
    pub async fn validate(&self) -> Result<(), Vec<ResourceFailure>> {
        let mut failures = Vec::new();
        for entry in &self.resources {
            if let Err(error) =
                timed(entry.agent.name(), Action::Validate, DEFAULT_TIMEOUT, entry.agent.validate()).await
            {
                failures.push(ResourceFailure {
                    resource: entry.agent.name().to_string(),
                    action: Action::Validate,
                    error,
                });
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures)
        }
    }

    fn entry(&self, resource: &str) -> Result<&Entry, RunError> {
        self.resources
            .iter()
            .find(|entry| entry.agent.name() == resource)
            .ok_or_else(|| RunError::UnknownResource { package: self.package.clone(), resource: resource.to_string() })
    }
}

/// Pacemaker's clone meta attributes of an OCF resource of `package` run as `instance`.
fn ocf_meta_attributes(package: &PackageDef, instance: &str, options: &AgentOptions) -> BTreeMap<String, String> {
    let mut attributes = BTreeMap::new();
    if let Some(node) = &options.node {
        attributes.insert("OCF_RESKEY_CRM_meta_on_node".into(), node.clone());
    }
    if !package.multi_instance() {
        return attributes;
    }
    let suffix = instance.split_once(':').map_or("0", |(_, suffix)| suffix);
    let (number, count) = match package.instances {
        Instances::Count(count) => (suffix.parse::<u32>().unwrap_or(0), count as usize),
        Instances::All => {
            let position = package.nodes.iter().position(|node| node == suffix);
            (position.unwrap_or(0) as u32, package.nodes.len().max(1))
        }
    };
    attributes.insert("OCF_RESKEY_CRM_meta_clone".into(), number.to_string());
    attributes.insert("OCF_RESKEY_CRM_meta_clone_max".into(), count.to_string());
    attributes.insert("OCF_RESKEY_CRM_meta_clone_node_max".into(), "1".into());
    if let Some(promotable) = &package.promotable {
        for name in ["promoted_max", "master_max"] {
            attributes.insert(format!("OCF_RESKEY_CRM_meta_{name}"), promotable.primaries.to_string());
        }
        for name in ["promoted_node_max", "master_node_max"] {
            attributes.insert(format!("OCF_RESKEY_CRM_meta_{name}"), "1".into());
        }
    }
    attributes
}

#[cfg(test)]
mod promotion_tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::status::OcfStatus;

    /// Records every action; `promote` of `fail` fails.
    struct Recording {
        name: &'static str,
        log: Arc<Mutex<Vec<String>>>,
        fail: Option<Action>,
    }

    impl Recording {
        fn record(&self, action: Action) -> Result<(), AgentError> {
            self.log.lock().unwrap().push(format!("{} {}", action.name(), self.name));
            match self.fail {
                Some(failing) if failing == action => Err(AgentError::new(OcfStatus::ErrGeneric, "refused")),
                _ => Ok(()),
            }
        }
    }

    #[async_trait::async_trait]
    impl Agent for Recording {
        fn name(&self) -> &str {
            self.name
        }
        fn kind(&self) -> &'static str {
            "ocf"
        }
        async fn validate(&self) -> Result<(), AgentError> {
            Ok(())
        }
        async fn start(&self, _: &ActionContext) -> Result<(), AgentError> {
            self.record(Action::Start)
        }
        async fn stop(&self, _: &ActionContext) -> Result<(), AgentError> {
            self.record(Action::Stop)
        }
        async fn monitor(&self, _: &ActionContext) -> Result<MonitorState, AgentError> {
            Ok(MonitorState::Running)
        }
        async fn meta_data(&self) -> Result<String, AgentError> {
            Ok(String::new())
        }
        async fn promote(&self, _: &ActionContext) -> Result<(), AgentError> {
            self.record(Action::Promote)
        }
        async fn demote(&self, _: &ActionContext) -> Result<(), AgentError> {
            self.record(Action::Demote)
        }
    }

    /// storage (always), data (promoted), vip (primary only), in this order.
    fn promotable_runner(fail: Option<(&'static str, Action)>) -> (PackageRunner, Arc<Mutex<Vec<String>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let entry = |name: &'static str, part: Part| {
            let fail = fail.filter(|(failing, _)| *failing == name).map(|(_, action)| action);
            let mut entry = Entry::plain(None, Box::new(Recording { name, log: log.clone(), fail }));
            entry.part = part;
            entry
        };
        let resources =
            vec![entry("storage", Part::Always), entry("data", Part::Promoted), entry("vip", Part::PrimaryOnly)];
        (PackageRunner { package: "db".into(), resources, highest_epoch: AtomicU64::new(0) }, log)
    }

    fn taken(log: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
        std::mem::take(&mut *log.lock().unwrap())
    }

    #[tokio::test]
    async fn a_promotion_follows_file_order_and_a_stop_demotes_first() {
        let (runner, log) = promotable_runner(None);
        runner.start(1).await.unwrap();
        assert_eq!(taken(&log), ["start storage", "start data"], "primary-only resources wait for a promotion");
        assert!(!runner.promoted());
        runner.promote(1).await.unwrap();
        assert_eq!(taken(&log), ["promote data", "start vip"]);
        assert!(runner.promoted());
        runner.demote(1).await.unwrap();
        assert_eq!(taken(&log), ["stop vip", "demote data"]);
        assert!(!runner.promoted());
        runner.promote(1).await.unwrap();
        taken(&log);
        runner.stop(1).await.unwrap();
        assert_eq!(taken(&log), ["stop vip", "demote data", "stop data", "stop storage"]);
        assert!(!runner.promoted());
        assert!(runner.monitored("data", false) && !runner.monitored("vip", false) && runner.monitored("vip", true));
    }

    #[tokio::test]
    async fn a_failed_promotion_is_undone_in_reverse() {
        let (runner, log) = promotable_runner(Some(("vip", Action::Start)));
        runner.start(1).await.unwrap();
        taken(&log);
        let error = runner.promote(1).await.unwrap_err();
        assert!(
            matches!(&error, RunError::StartFailed { failure, rollback_failures, .. }
            if failure.resource == "vip" && rollback_failures.is_empty()),
            "{error}"
        );
        assert_eq!(taken(&log), ["promote data", "start vip", "stop vip", "demote data"]);
        assert!(!runner.promoted());
        // A demotion that fails leaves the instance possibly promoted: a stop tries it again.
        let (runner, log) = promotable_runner(Some(("data", Action::Demote)));
        runner.promote(1).await.unwrap();
        assert!(matches!(runner.demote(1).await, Err(RunError::StopFailed { .. })));
        assert!(runner.promoted());
        taken(&log);
        assert!(runner.stop(1).await.is_err());
        assert_eq!(taken(&log), ["stop vip", "demote data", "stop storage"]);
    }

    #[test]
    fn scores_read_as_agents_write_them() {
        assert_eq!(parse_promotion_score("5\n"), Some(5));
        assert_eq!(parse_promotion_score("INFINITY"), Some(1_000_000));
        assert_eq!(parse_promotion_score("-INFINITY\n"), Some(-1_000_000));
        assert_eq!(parse_promotion_score("99999999"), Some(1_000_000));
        assert_eq!(parse_promotion_score("ten"), None);
    }
}
