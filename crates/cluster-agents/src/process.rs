//! The `process` agent: a supervised program and its whole process tree (a cgroup v2 or a process group).

use std::sync::Arc;
use std::time::Duration;

use cluster_host::{CommandSpec, Host, ServiceOutput, ServiceSpec, Signal};
use cluster_package::{ProcessOutput, ProcessResource, Readiness};

use crate::agent::{meta_data_xml, ActionContext, Agent, MonitorState};
use crate::status::AgentError;

pub(crate) const POLL: Duration = Duration::from_millis(100);

pub(crate) struct ProcessAgent {
    name: String,
    params: ProcessResource,
    host: Host,
    /// Held by the task that starts the unit's first process for as long as the fork and exec run,
    /// also after the start that began it was dropped (they run on the blocking pool and cannot be
    /// cancelled): stop and monitor take it first, so they never call the unit stopped while its
    /// first process may still appear, and a new start never forks a second one beside it.
    spawning: Arc<tokio::sync::Mutex<()>>,
}

impl ProcessAgent {
    pub(crate) fn new(name: &str, params: &ProcessResource, host: &Host) -> Self {
        ProcessAgent { name: name.to_string(), params: params.clone(), host: host.clone(), spawning: Arc::default() }
    }

    /// Waits, at most most of the action's timeout, until no start of the unit's first process is
    /// in flight (one whose start was abandoned).
    async fn settle(&self, unit: &str, context: &ActionContext) -> Result<(), AgentError> {
        let within = context.timeout.saturating_sub(context.timeout / 10);
        match tokio::time::timeout(within, self.spawning.lock()).await {
            Ok(_idle) => Ok(()),
            Err(_) => Err(AgentError::generic(format!(
                "start of the first process of unit {unit} still in flight after {within:?}: cannot tell whether it will run"
            ))),
        }
    }

    fn unit(&self, context: &ActionContext) -> String {
        format!("{}.{}", context.package, self.name)
    }

    async fn running(&self, unit: &str) -> Result<bool, AgentError> {
        Ok(!self.host.processes.pids(unit).await?.is_empty())
    }

    async fn wait_ready(&self, unit: &str) -> Result<(), AgentError> {
        match &self.params.ready {
            Readiness::AliveFor(duration) => {
                self.host.clock.sleep(*duration).await;
                if !self.running(unit).await? {
                    return Err(AgentError::generic(format!(
                        "process of resource {} exited within {:?} of starting",
                        self.name, duration
                    )));
                }
                Ok(())
            }
            Readiness::TcpPort(address) => loop {
                if self.host.processes.tcp_accepts(*address, Duration::from_millis(500)).await {
                    return Ok(());
                }
                if !self.running(unit).await? {
                    return Err(AgentError::generic(format!(
                        "process of resource {} exited before accepting on {address}",
                        self.name
                    )));
                }
                self.host.clock.sleep(POLL).await;
            },
            Readiness::Command(argv) => loop {
                let check = CommandSpec {
                    argv: argv.clone(),
                    environment: Default::default(),
                    timeout: Duration::from_secs(10),
                };
                let output = self.host.processes.run(&check).await?;
                if output.exit_code == Some(0) {
                    return Ok(());
                }
                if !self.running(unit).await? {
                    return Err(AgentError::generic(format!(
                        "process of resource {} exited before its readiness check passed",
                        self.name
                    )));
                }
                self.host.clock.sleep(Duration::from_millis(200)).await;
            },
        }
    }

    async fn wait_gone(&self, unit: &str, within: Duration) -> Result<bool, AgentError> {
        let deadline = self.host.clock.now() + within;
        loop {
            if !self.running(unit).await? {
                return Ok(true);
            }
            if self.host.clock.now() >= deadline {
                return Ok(false);
            }
            self.host.clock.sleep(POLL).await;
        }
    }
}

#[async_trait::async_trait]
impl Agent for ProcessAgent {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "process"
    }

    async fn validate(&self) -> Result<(), AgentError> {
        if self.params.command.first().is_none_or(|program| program.is_empty()) {
            return Err(AgentError::configured(format!("resource {}: command is empty", self.name)));
        }
        if Signal::from_name(&self.params.stop_signal).is_none() {
            return Err(AgentError::configured(format!(
                "resource {}: unknown stop signal {}",
                self.name, self.params.stop_signal
            )));
        }
        if let Readiness::Command(argv) = &self.params.ready {
            if argv.is_empty() {
                return Err(AgentError::configured(format!("resource {}: readiness command is empty", self.name)));
            }
        }
        Ok(())
    }

    async fn start(&self, context: &ActionContext) -> Result<(), AgentError> {
        self.validate().await?;
        let unit = self.unit(context);
        // Taken before looking: an abandoned start's process may still be on its way.
        let spawning = self.spawning.clone().lock_owned().await;
        if self.running(&unit).await? {
            return Ok(());
        }
        let mut environment = self.params.environment.clone();
        environment.insert("CLUSTER_EPOCH".to_string(), context.epoch.to_string());
        environment.insert("CLUSTER_PACKAGE".to_string(), context.package.clone());
        environment.extend(context.environment.iter().map(|(key, value)| (key.clone(), value.clone())));
        environment.insert("CLUSTER_RESOURCE".to_string(), self.name.clone());
        let spec = ServiceSpec {
            unit: unit.clone(),
            argv: self.params.command.clone(),
            environment,
            user: self.params.user.clone(),
            group: self.params.group.clone(),
            working_directory: self.params.working_directory.clone(),
            output: match &self.params.output {
                ProcessOutput::Journal => ServiceOutput::Inherit,
                ProcessOutput::File(path) => ServiceOutput::File(path.clone()),
            },
        };
        // In a task of its own, holding `spawning` until the process exists (or failed to), whatever
        // becomes of this start.
        let processes = self.host.processes.clone();
        let spawn = tokio::spawn(async move {
            let _spawning = spawning;
            processes.spawn(&spec).await
        });
        let pid = spawn
            .await
            .map_err(|error| AgentError::generic(format!("start of the first process of unit {unit}: {error}")))??;
        tracing::info!(resource = %self.name, epoch = context.epoch, pid, %unit, "process started");
        self.wait_ready(&unit).await
    }

    async fn stop(&self, context: &ActionContext) -> Result<(), AgentError> {
        let unit = self.unit(context);
        self.settle(&unit, context).await?;
        if self.running(&unit).await? {
            let signal = Signal::from_name(&self.params.stop_signal).unwrap_or(Signal::Term);
            tracing::info!(resource = %self.name, epoch = context.epoch, %signal, %unit, "stopping process");
            self.host.processes.signal(&unit, signal).await?;
            if !self.wait_gone(&unit, self.params.kill_after).await? {
                tracing::warn!(resource = %self.name, %unit, "still running after {:?}, killing the whole unit", self.params.kill_after);
                self.host.processes.kill(&unit).await?;
                let remaining = context.timeout.saturating_sub(self.params.kill_after).max(Duration::from_secs(1));
                if !self.wait_gone(&unit, remaining).await? {
                    let pids = self.host.processes.pids(&unit).await?;
                    return Err(AgentError::generic(format!(
                        "processes {pids:?} of resource {} survived SIGKILL",
                        self.name
                    )));
                }
            }
        }
        self.host.processes.release(&unit).await?;
        Ok(())
    }

    async fn monitor(&self, context: &ActionContext) -> Result<MonitorState, AgentError> {
        let unit = self.unit(context);
        self.settle(&unit, context).await?;
        if self.running(&unit).await? {
            Ok(MonitorState::Running)
        } else {
            Ok(MonitorState::NotRunning)
        }
    }

    async fn meta_data(&self) -> Result<String, AgentError> {
        Ok(meta_data_xml(
            "process",
            "supervised program with its whole process tree",
            &[
                ("command", true, "", "argv"),
                ("environment", false, "", "extra environment variables"),
                ("user", false, "", "user to run as"),
                ("group", false, "", "group to run as"),
                ("working_directory", false, "", "working directory"),
                ("output", false, "journal", "journal or an absolute file path"),
                ("ready", false, "alive_for=500ms", "readiness: alive_for, tcp or command"),
                ("stop_signal", false, "SIGTERM", "first signal on stop"),
                ("kill_after", false, "10s", "SIGKILL the whole tree after this long"),
            ],
        ))
    }
}
