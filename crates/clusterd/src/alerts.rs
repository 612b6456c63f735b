//! Runs the alert hooks on the leader (the contract is in docs/monitoring.md).
//!
//! ```text
//!   leader? ── no ──> wait for a leadership change
//!     │ yes
//!     v
//!   events with seq ≥ ClusterState.alerts.next ──> for each event, every hook that wants one of its
//!     kinds runs at once (env CLUSTER_ALERT_*, JSON on stdin, killed at its timeout) ──> commit
//!     AlertsDelivered { next } ──> wait for the next applied entry
//!   node-lost (when a hook wants it): a node's lease turned expired in this leader's view
//! ```
//!
//! Its own task: a slow hook delays only later alerts, never the engine. A leader that loses its
//! leadership stops before committing the mark; the next leader runs those events again (at least
//! once). A failed hook (non-zero exit, timeout) is logged and counted, not retried.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_api::{ApiError, ClientReply, ClientRequest, ErrorKind};
use cluster_model::alerts::{classify, wants, AlertHook};
use cluster_model::controller::Liveness;
use cluster_model::{Command, CommandOutcome, Event};
use cluster_raft::{ConsensusError, ConsensusNode};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::dispatch::Failure;
use crate::engine::{wall_ms, Engine};
use crate::metrics::Metrics;

/// Events handled before the mark is committed.
const BATCH: usize = 64;
/// How often the leader looks at its lease view when a hook wants `node-lost`.
const NODE_LOST_POLL: Duration = Duration::from_millis(250);
/// Longest sleep with nothing to do.
const IDLE: Duration = Duration::from_secs(60);
/// Output of a failed hook kept for the log.
const OUTPUT_LOGGED: usize = 400;

/// One alert: a replicated event (with its sequence number) or a `node-lost` of this leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Alert {
    pub(crate) kinds: Vec<&'static str>,
    pub(crate) event: Event,
    /// False for `node-lost`, which has no sequence number.
    pub(crate) replicated: bool,
}

impl Alert {
    /// The environment of a hook: Pacemaker's `CRM_alert_*` as `CLUSTER_ALERT_*`, plus ours.
    pub(crate) fn environment(&self, hook: &AlertHook, leader: &str) -> Vec<(String, String)> {
        let event = &self.event;
        let (from, to) = event.what.split_once(" -> ").map_or(("", ""), |(from, to)| (from, to));
        let timestamp = std::time::UNIX_EPOCH + Duration::from_millis(event.at_ms);
        let mut env = vec![
            ("KIND", self.kinds.first().copied().unwrap_or("").to_owned()),
            ("KINDS", self.kinds.join(",")),
            ("VERSION", env!("CARGO_PKG_VERSION").to_owned()),
            ("RECIPIENT", hook.recipient.clone().unwrap_or_default()),
            ("SEQUENCE", if self.replicated { event.seq.to_string() } else { String::new() }),
            ("TIMESTAMP", humantime::format_rfc3339_millis(timestamp).to_string()),
            ("TIMESTAMP_EPOCH", (event.at_ms / 1_000).to_string()),
            ("TIMESTAMP_MS", event.at_ms.to_string()),
            ("NODE", event.node.clone().unwrap_or_default()),
            ("PACKAGE", event.package.clone().unwrap_or_default()),
            ("EPOCH", event.epoch.to_string()),
            ("TASK", event.what.clone()),
            ("DESC", event.reason.clone()),
            ("PHASE_FROM", from.to_owned()),
            ("PHASE_TO", to.to_owned()),
            ("PHASE_MS", event.phase_ms.map(|ms| ms.to_string()).unwrap_or_default()),
            ("LEADER", leader.to_owned()),
        ];
        env.sort();
        env.into_iter().map(|(name, value)| (format!("CLUSTER_ALERT_{name}"), value)).collect()
    }

    /// The JSON document written on the hook's stdin.
    pub(crate) fn json(&self, hook: &AlertHook, leader: &str) -> serde_json::Value {
        let event = &self.event;
        let (from, to) = event.what.split_once(" -> ").map_or((None, None), |(from, to)| (Some(from), Some(to)));
        json!({
            "kind": self.kinds.first(),
            "kinds": self.kinds,
            "sequence": self.replicated.then_some(event.seq),
            "at_ms": event.at_ms,
            "node": event.node,
            "package": event.package,
            "epoch": event.epoch,
            "what": event.what,
            "reason": event.reason,
            "phase_from": from,
            "phase_to": to,
            "phase_ms": event.phase_ms,
            "leader": leader,
            "recipient": hook.recipient,
            "version": env!("CARGO_PKG_VERSION"),
        })
    }
}

/// How one hook run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HookResult {
    Ok,
    Failed(String),
    TimedOut,
}

impl HookResult {
    fn label(&self) -> &'static str {
        match self {
            HookResult::Ok => "ok",
            HookResult::Failed(_) => "failed",
            HookResult::TimedOut => "timeout",
        }
    }
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let start = text.len().saturating_sub(OUTPUT_LOGGED);
    let start = (start..=text.len()).find(|index| text.is_char_boundary(*index)).unwrap_or(text.len());
    text[start..].to_owned()
}

/// Runs one hook for one alert: a clean environment (PATH and the alert), the JSON on stdin, its
/// own process group, killed with the group at its timeout.
pub(crate) async fn run_hook(path: &str, hook: &AlertHook, alert: &Alert, leader: &str) -> HookResult {
    let mut command = tokio::process::Command::new(path);
    command
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(alert.environment(hook, leader))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => return HookResult::Failed(format!("cannot run it: {err}")),
    };
    let pid = child.id();
    if let Some(mut stdin) = child.stdin.take() {
        let mut document = alert.json(hook, leader).to_string();
        document.push('\n');
        // A hook that does not read its stdin may exit first: not an error.
        let _ = stdin.write_all(document.as_bytes()).await;
    }
    match tokio::time::timeout(Duration::from_millis(hook.timeout_ms), child.wait_with_output()).await {
        Ok(Ok(output)) if output.status.success() => HookResult::Ok,
        Ok(Ok(output)) => {
            let mut detail = format!("{}", output.status);
            let said = tail(if output.stderr.is_empty() { &output.stdout } else { &output.stderr });
            if !said.is_empty() {
                detail.push_str(&format!(": {said}"));
            }
            HookResult::Failed(detail)
        }
        Ok(Err(err)) => HookResult::Failed(format!("cannot wait for it: {err}")),
        Err(_) => {
            if let Some(pid) = pid {
                let group = nix::unistd::Pid::from_raw(pid as i32);
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            }
            HookResult::TimedOut
        }
    }
}

/// Runs every hook that wants `alert`, all at once; logs and counts each result.
async fn deliver(hooks: &BTreeMap<String, AlertHook>, alert: &Alert, leader: &str, metrics: &Metrics) {
    let runs = hooks.iter().filter(|(_, hook)| wants(hook, &alert.kinds)).map(|(path, hook)| async move {
        let began = Instant::now();
        let result = run_hook(path, hook, alert, leader).await;
        metrics.alert_run(path, result.label(), began.elapsed());
        let what = &alert.event.what;
        match &result {
            HookResult::Ok => tracing::debug!(hook = %path, kind = alert.kinds[0], %what, "alert hook ran"),
            HookResult::Failed(detail) => {
                tracing::warn!(hook = %path, kind = alert.kinds[0], %what, "alert hook failed: {detail}")
            }
            HookResult::TimedOut => tracing::warn!(
                hook = %path, kind = alert.kinds[0], %what,
                "alert hook killed after its timeout of {} ms", hook.timeout_ms
            ),
        }
    });
    futures::future::join_all(runs).await;
}

/// What the runner reads from the state in one go.
struct Pending {
    hooks: BTreeMap<String, AlertHook>,
    next: u64,
    events: Vec<Event>,
}

/// The runner: one task per daemon, active only while this node leads.
pub(crate) async fn run(node: Arc<ConsensusNode>, engine: Arc<Engine>, metrics: Arc<Metrics>) {
    let me = node.me().name.clone();
    let mut leadership = node.leadership_changes();
    let mut led_term = None;
    // Nodes this leader already reported lost (cleared when their lease comes back).
    let mut lost: BTreeSet<String> = BTreeSet::new();
    loop {
        let Some(term) = node.leadership() else {
            led_term = None;
            tokio::select! {
                () = leadership.changed() => {}
                () = tokio::time::sleep(IDLE) => {}
            }
            continue;
        };
        if led_term != Some(term) {
            led_term = Some(term);
            lost.clear();
        }
        let applied = node.applied_index();
        let pending = node.read_local(|state| {
            if state.alerts.hooks.is_empty() {
                return Pending { hooks: BTreeMap::new(), next: state.alerts.next, events: Vec::new() };
            }
            // Sequence numbers are consecutive: the first event to deliver is found by position.
            let oldest = state.events.front().map_or(state.next_event, |event| event.seq);
            let skip = state.alerts.next.saturating_sub(oldest) as usize;
            Pending {
                hooks: state.alerts.hooks.clone(),
                next: state.alerts.next,
                events: state.events.iter().skip(skip).take(BATCH).cloned().collect(),
            }
        });
        let wants_node_lost = pending.hooks.values().any(|hook| hook.events.iter().any(|kind| kind == "node-lost"));
        if wants_node_lost {
            for alert in newly_lost(&engine.view().nodes, &mut lost) {
                deliver(&pending.hooks, &alert, &me, &metrics).await;
            }
        }
        if !pending.hooks.is_empty() && !pending.events.is_empty() {
            if let Some(first) = pending.events.first().filter(|first| first.seq > pending.next) {
                let skipped = first.seq - pending.next;
                metrics.alert_events_skipped(skipped);
                tracing::warn!(skipped, "alert hooks: events left the history before their hooks ran");
            }
            let mut delivered = None;
            for event in &pending.events {
                if node.leadership() != Some(term) {
                    break;
                }
                let alert = Alert { kinds: classify(event), event: event.clone(), replicated: true };
                deliver(&pending.hooks, &alert, &me, &metrics).await;
                delivered = Some(event.seq + 1);
            }
            if let Some(next) = delivered.filter(|_| node.leadership() == Some(term)) {
                if let Err(err) = node.write(Command::AlertsDelivered { next }).await {
                    tracing::warn!(error = %err, "alert hooks: cannot record the delivery; the next leader repeats it");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            continue;
        }
        let wait = if wants_node_lost { NODE_LOST_POLL } else { IDLE };
        tokio::select! {
            () = leadership.changed() => {}
            _ = node.wait_applied_after(applied, wait) => {}
        }
    }
}

/// `node-lost` alerts for nodes whose lease turned expired in this leader's view since it last
/// looked; a node that is alive again may be reported again later.
fn newly_lost(view: &BTreeMap<String, Liveness>, lost: &mut BTreeSet<String>) -> Vec<Alert> {
    let mut alerts = Vec::new();
    for (name, liveness) in view {
        match liveness {
            Liveness::Expired if lost.insert(name.clone()) => alerts.push(Alert {
                kinds: vec!["node-lost", "node"],
                event: Event {
                    seq: 0,
                    at_ms: wall_ms(),
                    package: None,
                    node: Some(name.clone()),
                    epoch: 0,
                    what: "lost".into(),
                    reason: "its lease expired: the leader has not heard from it for longer than the lease".into(),
                    phase_ms: None,
                },
                replicated: false,
            }),
            Liveness::Alive => {
                lost.remove(name);
            }
            _ => {}
        }
    }
    alerts
}

/// `clusterctl cluster alert add|remove|list`.
pub(crate) async fn serve(node: &ConsensusNode, request: &ClientRequest) -> Result<ClientReply, Failure> {
    match request {
        ClientRequest::AlertSet { path, hook } => {
            if let Some(hook) = hook {
                cluster_model::alerts::validate_hook(path, hook).map_err(ConsensusError::Invalid)?;
            }
            let command = Command::SetAlert { path: path.clone(), hook: hook.clone() };
            match node.write(command).await? {
                CommandOutcome::Rejected { reason } => Err(ConsensusError::Invalid(reason).into()),
                _ if hook.is_some() => Ok(ClientReply::Done { message: format!("alert hook {path} set") }),
                _ => Ok(ClientReply::Done { message: format!("alert hook {path} removed") }),
            }
        }
        ClientRequest::AlertList => {
            let (hooks, next) = node
                .read(|state| {
                    (state.alerts.hooks.iter().map(|(p, h)| (p.clone(), h.clone())).collect(), state.alerts.next)
                })
                .await?;
            Ok(ClientReply::Alerts { hooks, next })
        }
        other => Err(Failure::Api(ApiError::new(ErrorKind::Invalid, format!("not an alert request: {other:?}")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        let event = Event {
            seq: 41,
            at_ms: 1_700_000_000_123,
            package: Some("web".into()),
            node: Some("n2".into()),
            epoch: 7,
            what: "running -> starting".into(),
            reason: "node n1 lost its lease (watchdog)".into(),
            phase_ms: Some(5_000),
        };
        Alert { kinds: classify(&event), event, replicated: true }
    }

    fn hook(timeout_ms: u64) -> AlertHook {
        AlertHook { events: vec!["failover".into()], timeout_ms, recipient: Some("ops@example.org".into()) }
    }

    #[test]
    fn the_environment_maps_pacemakers_variables() {
        let env: BTreeMap<String, String> = alert().environment(&hook(30_000), "n3").into_iter().collect();
        let get = |name: &str| env.get(&format!("CLUSTER_ALERT_{name}")).map(String::as_str);
        assert_eq!(get("KIND"), Some("failover"));
        assert_eq!(get("KINDS"), Some("failover,package"));
        assert_eq!(get("NODE"), Some("n2"));
        assert_eq!(get("PACKAGE"), Some("web"));
        assert_eq!(get("SEQUENCE"), Some("41"));
        assert_eq!(get("TASK"), Some("running -> starting"));
        assert_eq!(get("DESC"), Some("node n1 lost its lease (watchdog)"));
        assert_eq!(get("PHASE_FROM"), Some("running"));
        assert_eq!(get("PHASE_TO"), Some("starting"));
        assert_eq!(get("TIMESTAMP"), Some("2023-11-14T22:13:20.123Z"));
        assert_eq!(get("TIMESTAMP_EPOCH"), Some("1700000000"));
        assert_eq!(get("RECIPIENT"), Some("ops@example.org"));
        assert_eq!(get("LEADER"), Some("n3"));
        assert_eq!(get("EPOCH"), Some("7"));
    }

    #[tokio::test]
    async fn a_hook_gets_the_json_and_a_hanging_hook_is_killed_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            path.display().to_string()
        };
        let path = script(
            "good",
            &format!("#!/bin/sh\ncat > {}\necho \"$CLUSTER_ALERT_KIND\" >> {}\nexit 0\n", out.display(), out.display()),
        );
        assert_eq!(run_hook(&path, &hook(5_000), &alert(), "n3").await, HookResult::Ok);
        let written = std::fs::read_to_string(&out).unwrap();
        let (document, kind) = written.trim_end().rsplit_once('\n').unwrap();
        let document: serde_json::Value = serde_json::from_str(document).unwrap();
        assert_eq!(document["sequence"], 41);
        assert_eq!(document["reason"], "node n1 lost its lease (watchdog)");
        assert_eq!(document["leader"], "n3");
        assert_eq!(kind, "failover");

        let path = script("hanging", "#!/bin/sh\necho started >&2\nsleep 30\n");
        let began = Instant::now();
        assert_eq!(run_hook(&path, &hook(1_000), &alert(), "n3").await, HookResult::TimedOut);
        assert!(began.elapsed() < Duration::from_secs(5), "{:?}", began.elapsed());

        let path = script("failing", "#!/bin/sh\necho no such mailbox >&2\nexit 3\n");
        let failed = run_hook(&path, &hook(5_000), &alert(), "n3").await;
        assert_eq!(failed, HookResult::Failed("exit status: 3: no such mailbox".into()));
        let missing = run_hook("/nonexistent/hook", &hook(5_000), &alert(), "n3").await;
        assert!(matches!(missing, HookResult::Failed(ref why) if why.starts_with("cannot run it")), "{missing:?}");
    }

    #[test]
    fn a_node_is_reported_lost_once_until_it_is_alive_again() {
        let mut lost = BTreeSet::new();
        let view = |state| BTreeMap::from([("n1".to_owned(), state), ("n2".to_owned(), Liveness::Alive)]);
        assert!(newly_lost(&view(Liveness::Unknown), &mut lost).is_empty());
        let alerts = newly_lost(&view(Liveness::Expired), &mut lost);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].event.node.as_deref(), Some("n1"));
        assert_eq!(alerts[0].kinds, vec!["node-lost", "node"]);
        assert!(newly_lost(&view(Liveness::Expired), &mut lost).is_empty());
        assert!(newly_lost(&view(Liveness::Alive), &mut lost).is_empty());
        assert_eq!(newly_lost(&view(Liveness::Expired), &mut lost).len(), 1);
    }
}
