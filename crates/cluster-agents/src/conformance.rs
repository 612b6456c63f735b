//! The conformance suite every agent passes (STYLE.md §20): validate accepts good parameters, start and
//! stop are idempotent, monitor follows them, meta-data is an OCF document, validate rejects bad parameters.
//!
//! Used by this crate's unit tests against the fakes and by the root tests against the real host.

use crate::agent::{ActionContext, Agent, MonitorState};
use crate::status::OcfStatus;

async fn expect_state(
    agent: &dyn Agent,
    context: &ActionContext,
    expected: MonitorState,
    step: &str,
    failures: &mut Vec<String>,
) {
    match agent.monitor(context).await {
        Ok(state) if state == expected => {}
        other => {
            failures.push(format!("{step}: monitor of {} returned {other:?}, expected {expected:?}", agent.name()))
        }
    }
}

/// Run the lifecycle checks on an agent whose resource is stopped. Returns every violation.
pub async fn check_lifecycle(agent: &dyn Agent, context: &ActionContext) -> Result<(), Vec<String>> {
    let mut failures = Vec::new();
    let name = agent.name().to_string();
    if let Err(error) = agent.validate().await {
        failures.push(format!("validate of {name} rejected good parameters: {error}"));
    }
    expect_state(agent, context, MonitorState::NotRunning, "before start", &mut failures).await;
    if let Err(error) = agent.stop(context).await {
        failures.push(format!("stop of stopped {name} failed (stop must be idempotent): {error}"));
    }
    if let Err(error) = agent.start(context).await {
        failures.push(format!("start of {name} failed: {error}"));
        return Err(failures);
    }
    expect_state(agent, context, MonitorState::Running, "after start", &mut failures).await;
    if let Err(error) = agent.start(context).await {
        failures.push(format!("second start of {name} failed (start must be idempotent): {error}"));
    }
    expect_state(agent, context, MonitorState::Running, "after second start", &mut failures).await;
    if let Err(error) = agent.stop(context).await {
        failures.push(format!("stop of {name} failed: {error}"));
    }
    expect_state(agent, context, MonitorState::NotRunning, "after stop", &mut failures).await;
    if let Err(error) = agent.stop(context).await {
        failures.push(format!("second stop of {name} failed (stop must be idempotent): {error}"));
    }
    expect_state(agent, context, MonitorState::NotRunning, "after second stop", &mut failures).await;
    match agent.meta_data().await {
        Ok(xml) if xml.contains("<resource-agent") && xml.contains("<parameters>") => {}
        other => failures.push(format!("meta-data of {name} is not an OCF document: {other:?}")),
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

/// Check that validate rejects an agent built with bad parameters as a configuration error.
pub async fn check_rejects_bad_parameters(agent: &dyn Agent) -> Result<(), String> {
    match agent.validate().await {
        Err(error)
            if matches!(error.status, OcfStatus::ErrConfigured | OcfStatus::ErrArgs | OcfStatus::ErrInstalled) =>
        {
            Ok(())
        }
        other => Err(format!(
            "validate of {} with bad parameters returned {other:?}, expected a configuration error",
            agent.name()
        )),
    }
}
