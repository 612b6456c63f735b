//! The `ocf` agent: any OCF resource agent (Pacemaker's `resource-agents`, ours in `resource-agents/`),
//! run with `OCF_ROOT`, `OCF_RESOURCE_INSTANCE`, `OCF_RESKEY_*` and the OCF exit codes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cluster_host::{CommandSpec, Host};
use cluster_package::{OcfAgentRef, OcfResource};

use crate::agent::{Action, ActionContext, Agent, MonitorState};
use crate::status::{AgentError, OcfStatus};

/// Default `OCF_ROOT`.
pub const DEFAULT_OCF_ROOT: &str = "/usr/lib/ocf";

pub(crate) struct OcfAgent {
    name: String,
    params: OcfResource,
    host: Host,
    ocf_root: PathBuf,
    /// Timeouts for validate-all and meta-data, which have no per-resource setting.
    short_timeout: Duration,
}

impl OcfAgent {
    pub(crate) fn new(name: &str, params: &OcfResource, host: &Host, ocf_root: &Path) -> Self {
        OcfAgent {
            name: name.to_string(),
            params: params.clone(),
            host: host.clone(),
            ocf_root: ocf_root.to_path_buf(),
            short_timeout: Duration::from_secs(20),
        }
    }

    fn script(&self) -> PathBuf {
        match &self.params.agent {
            OcfAgentRef::Provider { provider, agent_type } => {
                self.ocf_root.join("resource.d").join(provider).join(agent_type)
            }
            OcfAgentRef::Path(path) => path.clone(),
        }
    }

    fn environment(&self, action: Action, context: Option<&ActionContext>) -> BTreeMap<String, String> {
        let mut environment = BTreeMap::new();
        environment.insert("OCF_ROOT".to_string(), self.ocf_root.display().to_string());
        environment.insert("OCF_FUNCTIONS_DIR".to_string(), self.ocf_root.join("lib/heartbeat").display().to_string());
        environment.insert("OCF_RA_VERSION_MAJOR".to_string(), "1".to_string());
        environment.insert("OCF_RA_VERSION_MINOR".to_string(), "1".to_string());
        environment.insert("OCF_RESOURCE_INSTANCE".to_string(), self.name.clone());
        let (provider, agent_type) = match &self.params.agent {
            OcfAgentRef::Provider { provider, agent_type } => (provider.clone(), agent_type.clone()),
            OcfAgentRef::Path(path) => (
                "local".to_string(),
                path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default(),
            ),
        };
        environment.insert("OCF_RESOURCE_PROVIDER".to_string(), provider);
        environment.insert("OCF_RESOURCE_TYPE".to_string(), agent_type);
        environment.insert("__OCF_ACTION".to_string(), action.name().to_string());
        for (key, value) in &self.params.params {
            environment.insert(format!("OCF_RESKEY_{key}"), value.clone());
        }
        if let Some(context) = context {
            environment.insert("OCF_RESKEY_CRM_meta_timeout".to_string(), context.timeout.as_millis().to_string());
            environment.insert("OCF_RESKEY_CRM_meta_interval".to_string(), context.interval.as_millis().to_string());
            environment.insert("OCF_RESKEY_CRM_meta_epoch".to_string(), context.epoch.to_string());
            environment.insert("CLUSTER_EPOCH".to_string(), context.epoch.to_string());
            environment.insert("CLUSTER_PACKAGE".to_string(), context.package.clone());
            environment.insert("OCF_CHECK_LEVEL".to_string(), context.depth.to_string());
            environment.extend(context.environment.iter().map(|(key, value)| (key.clone(), value.clone())));
        }
        environment
    }

    /// Run one action; returns the OCF status and the captured output.
    async fn run(&self, action: Action, context: Option<&ActionContext>) -> Result<(OcfStatus, String), AgentError> {
        let script = self.script();
        let metadata = std::fs::metadata(&script);
        if metadata.is_err() {
            return Err(AgentError::installed(format!(
                "ocf agent {} of resource {} not found at {}",
                self.params.agent,
                self.name,
                script.display()
            )));
        }
        let timeout = context.map(|context| context.timeout).unwrap_or(self.short_timeout);
        let command = CommandSpec {
            argv: vec![script.display().to_string(), action.name().to_string()],
            environment: self.environment(action, context),
            timeout,
        };
        let output = self.host.processes.run(&command).await?;
        if output.timed_out {
            return Err(AgentError::generic(format!(
                "{} of resource {} ({}) timed out after {timeout:?}",
                action.name(),
                self.name,
                self.params.agent
            )));
        }
        let status = match output.exit_code {
            Some(code) => OcfStatus::from_code(code),
            None => OcfStatus::ErrGeneric,
        };
        let detail = if output.stderr.trim().is_empty() { output.stdout.clone() } else { output.stderr.clone() };
        Ok((status, if status == OcfStatus::Success && action == Action::MetaData { output.stdout } else { detail }))
    }

    fn failure(&self, action: Action, status: OcfStatus, detail: &str) -> AgentError {
        let detail = detail.trim().lines().last().unwrap_or("").trim();
        let suffix = if detail.is_empty() { String::new() } else { format!(": {}", detail.to_lowercase()) };
        AgentError::new(
            status,
            format!("{} of resource {} ({}) failed{suffix}", action.name(), self.name, self.params.agent),
        )
    }
}

#[async_trait::async_trait]
impl Agent for OcfAgent {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "ocf"
    }

    async fn validate(&self) -> Result<(), AgentError> {
        for key in self.params.params.keys() {
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(AgentError::configured(format!("resource {}: bad parameter name {key:?}", self.name)));
            }
        }
        match self.run(Action::Validate, None).await? {
            (OcfStatus::Success | OcfStatus::ErrUnimplemented, _) => Ok(()),
            (status, detail) => Err(self.failure(Action::Validate, status, &detail)),
        }
    }

    async fn start(&self, context: &ActionContext) -> Result<(), AgentError> {
        match self.run(Action::Start, Some(context)).await? {
            (OcfStatus::Success, _) => Ok(()),
            (status, detail) => Err(self.failure(Action::Start, status, &detail)),
        }
    }

    async fn stop(&self, context: &ActionContext) -> Result<(), AgentError> {
        match self.run(Action::Stop, Some(context)).await? {
            // OCF: stop of a stopped resource is success; accept NOT_RUNNING from lax agents too.
            (OcfStatus::Success | OcfStatus::NotRunning, _) => Ok(()),
            (status, detail) => Err(self.failure(Action::Stop, status, &detail)),
        }
    }

    async fn monitor(&self, context: &ActionContext) -> Result<MonitorState, AgentError> {
        match self.run(Action::Monitor, Some(context)).await? {
            (OcfStatus::Success, _) => Ok(MonitorState::Running),
            (OcfStatus::RunningPromoted, _) => Ok(MonitorState::RunningPromoted),
            (OcfStatus::NotRunning, _) => Ok(MonitorState::NotRunning),
            // OCF_FAILED_PROMOTED (9) is a failure like any other, of a promoted instance.
            (status, detail) => Err(self.failure(Action::Monitor, status, &detail)),
        }
    }

    async fn promote(&self, context: &ActionContext) -> Result<(), AgentError> {
        match self.run(Action::Promote, Some(context)).await? {
            (OcfStatus::Success, _) => Ok(()),
            (status, detail) => Err(self.failure(Action::Promote, status, &detail)),
        }
    }

    async fn demote(&self, context: &ActionContext) -> Result<(), AgentError> {
        match self.run(Action::Demote, Some(context)).await? {
            // Demoting what is not promoted (or not running: Stateful says NOT_RUNNING) is done.
            (OcfStatus::Success | OcfStatus::NotRunning, _) => Ok(()),
            (status, detail) => Err(self.failure(Action::Demote, status, &detail)),
        }
    }

    async fn meta_data(&self) -> Result<String, AgentError> {
        match self.run(Action::MetaData, None).await? {
            (OcfStatus::Success, xml) => Ok(xml),
            (status, detail) => Err(self.failure(Action::MetaData, status, &detail)),
        }
    }
}
