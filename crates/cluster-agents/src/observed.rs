//! An agent wrapper that reports every action (type, action, duration, result) to an
//! [`ActionObserver`]: how `clusterd` counts agent actions for its metrics.
//!
//! An action cut short by its timeout (the runner drops the future) is reported as `timeout`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::agent::{Action, ActionContext, Agent, MonitorState};
use crate::status::AgentError;

/// Receives one call per finished (or abandoned) agent action.
pub trait ActionObserver: Send + Sync {
    /// `kind` is the resource type (`ip`, `filesystem`, `process`, `ocf`); `result` is `success`,
    /// `not_running` (a monitor that found the resource down), an OCF error name such as
    /// `err_generic`, or `timeout`.
    fn action(&self, kind: &'static str, action: Action, elapsed: Duration, result: &str);
}

pub(crate) struct ObservedAgent {
    pub(crate) inner: Box<dyn Agent>,
    pub(crate) observer: Arc<dyn ActionObserver>,
}

/// Reports `timeout` unless `finish` ran: the runner drops an action's future at its timeout.
struct Pending<'a> {
    agent: &'a ObservedAgent,
    action: Action,
    began: Instant,
    done: bool,
}

impl Pending<'_> {
    fn finish(mut self, result: &str) {
        self.done = true;
        self.agent.observer.action(self.agent.inner.kind(), self.action, self.began.elapsed(), result);
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.agent.observer.action(self.agent.inner.kind(), self.action, self.began.elapsed(), "timeout");
        }
    }
}

/// The metric label of an OCF error class: `err_generic`, `not_running` …
fn error_label(error: &AgentError) -> String {
    format!("{:?}", error.status).chars().fold(String::new(), |mut label, c| {
        if c.is_uppercase() && !label.is_empty() {
            label.push('_');
        }
        label.push(c.to_ascii_lowercase());
        label
    })
}

impl ObservedAgent {
    fn begin(&self, action: Action) -> Pending<'_> {
        Pending { agent: self, action, began: Instant::now(), done: false }
    }
}

fn label_of<T>(result: &Result<T, AgentError>) -> String {
    match result {
        Ok(_) => "success".to_owned(),
        Err(error) => error_label(error),
    }
}

#[async_trait::async_trait]
impl Agent for ObservedAgent {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn validate(&self) -> Result<(), AgentError> {
        let pending = self.begin(Action::Validate);
        let result = self.inner.validate().await;
        pending.finish(&label_of(&result));
        result
    }

    async fn start(&self, context: &ActionContext) -> Result<(), AgentError> {
        let pending = self.begin(Action::Start);
        let result = self.inner.start(context).await;
        pending.finish(&label_of(&result));
        result
    }

    async fn stop(&self, context: &ActionContext) -> Result<(), AgentError> {
        let pending = self.begin(Action::Stop);
        let result = self.inner.stop(context).await;
        pending.finish(&label_of(&result));
        result
    }

    async fn monitor(&self, context: &ActionContext) -> Result<MonitorState, AgentError> {
        let pending = self.begin(Action::Monitor);
        let result = self.inner.monitor(context).await;
        let label = match &result {
            Ok(MonitorState::NotRunning) => "not_running".to_owned(),
            other => label_of(other),
        };
        pending.finish(&label);
        result
    }

    async fn meta_data(&self) -> Result<String, AgentError> {
        self.inner.meta_data().await
    }

    async fn promote(&self, context: &ActionContext) -> Result<(), AgentError> {
        let pending = self.begin(Action::Promote);
        let result = self.inner.promote(context).await;
        pending.finish(&label_of(&result));
        result
    }

    async fn demote(&self, context: &ActionContext) -> Result<(), AgentError> {
        let pending = self.begin(Action::Demote);
        let result = self.inner.demote(context).await;
        pending.finish(&label_of(&result));
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::status::OcfStatus;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, String)>>);

    impl ActionObserver for Recorder {
        fn action(&self, kind: &'static str, action: Action, _elapsed: Duration, result: &str) {
            self.0.lock().unwrap().push((format!("{kind} {}", action.name()), result.to_owned()));
        }
    }

    struct Slow;

    #[async_trait::async_trait]
    impl Agent for Slow {
        fn name(&self) -> &str {
            "slow"
        }
        fn kind(&self) -> &'static str {
            "process"
        }
        async fn validate(&self) -> Result<(), AgentError> {
            Err(AgentError::new(OcfStatus::ErrConfigured, "bad parameter"))
        }
        async fn start(&self, _: &ActionContext) -> Result<(), AgentError> {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
        async fn stop(&self, _: &ActionContext) -> Result<(), AgentError> {
            Ok(())
        }
        async fn monitor(&self, _: &ActionContext) -> Result<MonitorState, AgentError> {
            Ok(MonitorState::NotRunning)
        }
        async fn meta_data(&self) -> Result<String, AgentError> {
            Ok(String::new())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_action_is_reported_with_its_result_and_a_timeout_as_timeout() {
        let recorder = Arc::new(Recorder::default());
        let agent = ObservedAgent { inner: Box::new(Slow), observer: recorder.clone() };
        let context = ActionContext::new("web", 1, Duration::from_secs(1));
        assert!(agent.validate().await.is_err());
        agent.stop(&context).await.unwrap();
        agent.monitor(&context).await.unwrap();
        let started = crate::timed("slow", Action::Start, context.timeout, agent.start(&context)).await;
        assert!(started.is_err());
        let seen = recorder.0.lock().unwrap().clone();
        let expected = [
            ("process validate-all", "err_configured"),
            ("process stop", "success"),
            ("process monitor", "not_running"),
            ("process start", "timeout"),
        ];
        let expected: Vec<(String, String)> = expected.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert_eq!(seen, expected);
    }
}
