//! The agent contract: start, stop, monitor (probe), validate and meta-data with OCF semantics.
//!
//! ```text
//!            validate ──► Ok | ERR_CONFIGURED/ERR_ARGS (static parameters only)
//!   stopped ──start──► running      start: idempotent, returns when fully up
//!   running ──stop───► stopped      stop:  idempotent, returns when fully down
//!   monitor: Running | RunningPromoted | NotRunning | Err(class)   (a probe is a monitor before acting)
//!   running ──promote──► promoted ──demote──► running   (promotable OCF agents only; others: ERR_UNIMPLEMENTED)
//! ```
//!
//! Every action receives an [`ActionContext`] with the package's epoch (the fencing token) and the
//! action's timeout; the runner enforces the timeout with [`timed`].

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use crate::status::{AgentError, OcfStatus};

/// Which action an agent is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// start
    Start,
    /// stop
    Stop,
    /// monitor (also used as the probe)
    Monitor,
    /// validate-all
    Validate,
    /// meta-data
    MetaData,
    /// promote (promotable packages)
    Promote,
    /// demote (promotable packages)
    Demote,
}

impl Action {
    /// The OCF action name.
    pub fn name(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Monitor => "monitor",
            Action::Validate => "validate-all",
            Action::MetaData => "meta-data",
            Action::Promote => "promote",
            Action::Demote => "demote",
        }
    }
}

/// What every action is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionContext {
    /// The package the resource belongs to.
    pub package: String,
    /// The package's epoch (fencing token), exported as `CLUSTER_EPOCH`.
    pub epoch: u64,
    /// The action's timeout.
    pub timeout: Duration,
    /// The monitor interval (zero for other actions), for `OCF_RESKEY_CRM_meta_interval`.
    pub interval: Duration,
    /// OCF check level for monitor (0 or 10).
    pub depth: u32,
    /// More environment for the action, set by the runner: the instance (`CLUSTER_INSTANCE`), and
    /// for OCF agents of several instances Pacemaker's clone and promotion meta attributes and the
    /// promotion score file (see `PackageRunner::for_instance`).
    pub environment: BTreeMap<String, String>,
}

impl ActionContext {
    /// A context with the given package, epoch and timeout (interval and depth zero).
    pub fn new(package: impl Into<String>, epoch: u64, timeout: Duration) -> Self {
        ActionContext {
            package: package.into(),
            epoch,
            timeout,
            interval: Duration::ZERO,
            depth: 0,
            environment: BTreeMap::new(),
        }
    }
}

/// What monitor found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonitorState {
    /// Fully up.
    Running,
    /// Fully up and promoted (`OCF_RUNNING_PROMOTED`, 8).
    RunningPromoted,
    /// Cleanly down.
    NotRunning,
}

/// A resource agent.
#[async_trait::async_trait]
pub trait Agent: Send + Sync {
    /// The resource name.
    fn name(&self) -> &str;
    /// The resource type (`ip`, `filesystem`, `process`, `ocf`).
    fn kind(&self) -> &'static str;
    /// Check the parameters without touching the resource.
    async fn validate(&self) -> Result<(), AgentError>;
    /// Bring the resource fully up; succeed at once if it already is.
    async fn start(&self, context: &ActionContext) -> Result<(), AgentError>;
    /// Bring the resource fully down; succeed at once if it already is.
    async fn stop(&self, context: &ActionContext) -> Result<(), AgentError>;
    /// Report whether the resource is running.
    async fn monitor(&self, context: &ActionContext) -> Result<MonitorState, AgentError>;
    /// OCF meta-data XML describing the agent and its parameters.
    async fn meta_data(&self) -> Result<String, AgentError>;
    /// Promote a running resource (promotable packages); only OCF agents have it.
    async fn promote(&self, _context: &ActionContext) -> Result<(), AgentError> {
        Err(AgentError::new(OcfStatus::ErrUnimplemented, format!("resource {} has no promote action", self.name())))
    }
    /// Demote a promoted resource back to running; only OCF agents have it.
    async fn demote(&self, _context: &ActionContext) -> Result<(), AgentError> {
        Err(AgentError::new(OcfStatus::ErrUnimplemented, format!("resource {} has no demote action", self.name())))
    }
}

/// Run `action` of `resource` under `timeout`; a timeout is OCF_ERR_GENERIC naming the resource.
pub async fn timed<T>(
    resource: &str,
    action: Action,
    timeout: Duration,
    future: impl Future<Output = Result<T, AgentError>>,
) -> Result<T, AgentError> {
    match tokio::time::timeout(timeout, future).await {
        Ok(result) => result,
        Err(_) => Err(AgentError::new(
            OcfStatus::ErrGeneric,
            format!("{} of resource {resource} timed out after {:?}", action.name(), timeout),
        )),
    }
}

/// An OCF meta-data document from a description and `(name, required, default, description)` parameters.
pub(crate) fn meta_data_xml(agent: &str, description: &str, parameters: &[(&str, bool, &str, &str)]) -> String {
    let mut xml = String::new();
    xml.push_str("<?xml version=\"1.0\"?>\n<!DOCTYPE resource-agent SYSTEM \"ra-api-1.dtd\">\n");
    xml.push_str(&format!("<resource-agent name=\"{agent}\" version=\"1.0\">\n<version>1.1</version>\n"));
    xml.push_str(&format!("<longdesc lang=\"en\">{description}</longdesc>\n<shortdesc lang=\"en\">{description}</shortdesc>\n<parameters>\n"));
    for (name, required, default, text) in parameters {
        xml.push_str(&format!(
            "<parameter name=\"{name}\" required=\"{}\"><longdesc lang=\"en\">{text}</longdesc><shortdesc lang=\"en\">{text}</shortdesc><content type=\"string\" default=\"{default}\"/></parameter>\n",
            u8::from(*required)
        ));
    }
    xml.push_str("</parameters>\n<actions>\n<action name=\"start\" timeout=\"20s\"/>\n<action name=\"stop\" timeout=\"20s\"/>\n<action name=\"monitor\" timeout=\"20s\" interval=\"10s\" depth=\"0\"/>\n<action name=\"validate-all\" timeout=\"20s\"/>\n<action name=\"meta-data\" timeout=\"5s\"/>\n</actions>\n</resource-agent>\n");
    xml
}
