//! The ordered package runner: start in file order, stop in reverse, roll back a failed start, collect
//! every error. This is what the failover engine calls.
//!
//! ```text
//!   start(epoch):  r1.start ─► r2.start ─► r3.start ✗ ─► r3.stop ─► r2.stop ─► r1.stop ─► Err(StartFailed)
//!   stop(epoch):   r3.stop ─► r2.stop ─► r1.stop      (every stop tried; Err(StopFailed) lists all failures)
//!   probe(epoch):  monitor of every resource, before acting (adopt what already runs)
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cluster_host::Host;
use cluster_package::{PackageDef, ResourceDef};
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
}

struct Entry {
    definition: Option<ResourceDef>,
    agent: Box<dyn Agent>,
}

/// Runs one package's resources in order.
pub struct PackageRunner {
    package: String,
    resources: Vec<Entry>,
    highest_epoch: AtomicU64,
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
        let resources = package
            .resources
            .iter()
            .map(|definition| Entry {
                definition: Some(definition.clone()),
                agent: crate::build_agent_with(definition, host, options),
            })
            .collect();
        PackageRunner { package: package.name.clone(), resources, highest_epoch: AtomicU64::new(0) }
    }

    /// A runner over ready-made agents (default 20 s timeouts), for tests and custom agents.
    pub fn from_agents(package: impl Into<String>, agents: Vec<Box<dyn Agent>>) -> Self {
        let resources = agents.into_iter().map(|agent| Entry { definition: None, agent }).collect();
        PackageRunner { package: package.into(), resources, highest_epoch: AtomicU64::new(0) }
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
            _ => (DEFAULT_TIMEOUT, Duration::ZERO, 0),
        };
        ActionContext { package: self.package.clone(), epoch, timeout, interval, depth }
    }

    fn see_epoch(&self, epoch: u64) -> u64 {
        self.highest_epoch.fetch_max(epoch, Ordering::SeqCst).max(epoch)
    }

    async fn stop_entry(&self, entry: &Entry, epoch: u64) -> Result<(), ResourceFailure> {
        let context = self.context(entry, Action::Stop, epoch);
        timed(entry.agent.name(), Action::Stop, context.timeout, entry.agent.stop(&context))
            .await
            .map_err(|error| ResourceFailure { resource: entry.agent.name().to_string(), action: Action::Stop, error })
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
        let mut failures = Vec::new();
        let mut outcomes = Vec::new();
        for entry in self.resources.iter().skip(first).rev() {
            let began = Instant::now();
            match self.stop_entry(entry, epoch).await {
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

    /// Monitor every resource (in start order) without acting: what is running now.
    pub async fn probe(&self, epoch: u64) -> Vec<ProbeResult> {
        let mut results = Vec::new();
        for entry in &self.resources {
            let context = self.context(entry, Action::Monitor, epoch);
            let state =
                timed(entry.agent.name(), Action::Monitor, context.timeout, entry.agent.monitor(&context)).await;
            results.push(ProbeResult { resource: entry.agent.name().to_string(), state });
        }
        results
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
