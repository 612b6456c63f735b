//! Alert hooks: executables the leader runs for replicated events (Pacemaker's alert agents).
//!
//! The hooks are part of the replicated state, so every node agrees on them, together with the
//! delivery mark: the sequence number of the next event to deliver. The leader runs the hooks for
//! every event from the mark on, then commits a new mark ([`crate::Command::AlertsDelivered`]); a
//! leader that dies before committing it leaves the events to its successor, which runs them again
//! (at least once across leader changes).
//!
//! ```text
//!   event (seq) ──classify──> kinds {package, failover, ...} ──> hooks wanting one of them
//!   ClusterState.alerts.next ≤ seq ──(leader runs the hooks)──> AlertsDelivered { next: seq + 1 }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::package::Event;
use crate::state::ClusterState;
use crate::CommandOutcome;

/// Every kind of alert, in the order `clusterctl` lists them.
pub const ALERT_KINDS: &[(&str, &str)] = &[
    ("failover", "a package left a node that lost its lease or was fenced, or exhausted its restart budget there"),
    ("fence", "a fence agent confirmed that a node is off"),
    ("blocked", "a package became blocked: its stop failed and its node could not be fenced"),
    ("failed", "a package failed: beyond its restart budget, or no node could take it"),
    ("node-lost", "the leader saw a node's lease expire (not a replicated event: see docs/monitoring.md)"),
    ("package", "any change of a package: every phase transition and operator action"),
    ("node", "any event of a node: started, leaving, standby, online, watchdog, fenced"),
];

/// Shortest and longest hook timeout.
pub const ALERT_TIMEOUT_MIN_MS: u64 = 1_000;
pub const ALERT_TIMEOUT_MAX_MS: u64 = 600_000;
/// Timeout of a hook when none is given (Pacemaker's default for alert agents).
pub const ALERT_TIMEOUT_DEFAULT_MS: u64 = 30_000;

/// One hook: which events it wants and how long it may run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertHook {
    /// Kinds from [`ALERT_KINDS`].
    pub events: Vec<String>,
    /// The hook is killed after this long (its process group).
    pub timeout_ms: u64,
    /// Handed to the hook as `CLUSTER_ALERT_RECIPIENT` (an address, a channel), as Pacemaker's recipients.
    pub recipient: Option<String>,
}

/// The configured hooks (by absolute path) and the delivery mark.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertState {
    pub hooks: BTreeMap<String, AlertHook>,
    /// Sequence number of the next event the leader delivers.
    pub next: u64,
}

/// Why a hook definition is refused; names the hook and what was expected.
pub fn validate_hook(path: &str, hook: &AlertHook) -> Result<(), String> {
    if !path.starts_with('/') || path.contains('\n') || path.contains('\0') {
        return Err(format!("alert hook `{path}`: expected an absolute path to an executable"));
    }
    if hook.events.is_empty() {
        return Err(format!("alert hook {path}: expected at least one event kind"));
    }
    for kind in &hook.events {
        if !ALERT_KINDS.iter().any(|(known, _)| known == kind) {
            let known: Vec<&str> = ALERT_KINDS.iter().map(|(known, _)| *known).collect();
            return Err(format!(
                "alert hook {path}: unknown event kind `{kind}`: expected one of {}",
                known.join(", ")
            ));
        }
    }
    if !(ALERT_TIMEOUT_MIN_MS..=ALERT_TIMEOUT_MAX_MS).contains(&hook.timeout_ms) {
        return Err(format!(
            "alert hook {path}: timeout of {} ms: expected between {} s and {} s",
            hook.timeout_ms,
            ALERT_TIMEOUT_MIN_MS / 1_000,
            ALERT_TIMEOUT_MAX_MS / 1_000
        ));
    }
    Ok(())
}

/// `Command::SetAlert`: adds, replaces or removes (`None`) the hook at `path`. The first hook of a
/// cluster starts delivery at the next event: the history recorded before is not replayed.
pub(crate) fn set_alert(state: &mut ClusterState, path: &str, hook: Option<&AlertHook>) -> CommandOutcome {
    match hook {
        Some(hook) => {
            if let Err(reason) = validate_hook(path, hook) {
                return CommandOutcome::Rejected { reason };
            }
            if state.alerts.hooks.is_empty() {
                state.alerts.next = state.alerts.next.max(state.next_event);
            }
            state.alerts.hooks.insert(path.to_owned(), hook.clone());
        }
        None => {
            if state.alerts.hooks.remove(path).is_none() {
                return CommandOutcome::Rejected { reason: format!("alert hook {path} is not configured") };
            }
        }
    }
    CommandOutcome::Applied
}

/// `Command::AlertsDelivered`: the mark only moves forward.
pub(crate) fn delivered(state: &mut ClusterState, next: u64) -> CommandOutcome {
    state.alerts.next = state.alerts.next.max(next);
    CommandOutcome::Applied
}

/// The kinds of a replicated event, most specific first (never `node-lost`, which the leader
/// raises from its lease table). Depends on the wording of the events of `ClusterState::apply`
/// and of the controller; the tests below drive both.
pub fn classify(event: &Event) -> Vec<&'static str> {
    let mut kinds = Vec::new();
    if event.package.is_some() {
        let to = event.what.rsplit(" -> ").next().filter(|_| event.what.contains(" -> "));
        let lost_owner = event.reason.starts_with("node ") && event.reason.contains(" lost its lease");
        let fenced_owner = event.reason == "node fenced";
        let relocating = event.reason.contains("restart budget exhausted");
        if to.is_some() && (lost_owner || fenced_owner || relocating) {
            kinds.push("failover");
        }
        match to {
            Some("blocked") => kinds.push("blocked"),
            Some("failed") => kinds.push("failed"),
            _ => {}
        }
        kinds.push("package");
    } else if event.node.is_some() {
        if event.what == "fenced" {
            kinds.push("fence");
        }
        kinds.push("node");
    }
    kinds
}

/// Whether `hook` wants an event of `kinds`.
pub fn wants(hook: &AlertHook, kinds: &[&str]) -> bool {
    hook.events.iter().any(|wanted| kinds.contains(&wanted.as_str()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::controller::{plan, Action, Liveness, View};
    use crate::{Command, Phase, Report};
    use std::sync::Arc;

    fn hook(events: &[&str]) -> AlertHook {
        AlertHook { events: events.iter().map(|e| e.to_string()).collect(), timeout_ms: 30_000, recipient: None }
    }

    fn package(name: &str) -> cluster_package::PackageDef {
        let text = format!(
            "name = \"{name}\"\nnodes = [\"n1\", \"n2\"]\nrestart = {{ max = 0, within = \"10m\" }}\n\
             [[resource]]\nname = \"p\"\ntype = \"process\"\ncommand = [\"/bin/sleep\", \"100\"]\n"
        );
        cluster_package::parse_package("p.toml", &text).expect("valid package")
    }

    /// A cluster where package `web` runs on n1 (lease-only nodes).
    fn running_on_n1() -> ClusterState {
        let mut state = ClusterState::default();
        for node in ["n1", "n2"] {
            state.apply(&Command::NodeHello { name: node.into(), watchdog: None, at_ms: 1 });
        }
        state.apply(&Command::PkgApply { def: Arc::new(package("web")), at_ms: 2 });
        let assign = Command::Assign {
            package: "web".into(),
            expected_epoch: 0,
            owner: Some("n1".into()),
            phase: Phase::Starting,
            reason: "placed".into(),
            at_ms: 3,
        };
        assert_eq!(state.apply(&assign), CommandOutcome::Applied);
        let running = Command::Report {
            package: "web".into(),
            node: "n1".into(),
            epoch: 1,
            report: Report::Running { resources: vec![] },
            at_ms: 4,
        };
        assert_eq!(state.apply(&running), CommandOutcome::Applied);
        state
    }

    fn view(n1: Liveness) -> View {
        View {
            nodes: [("n1".to_owned(), n1), ("n2".to_owned(), Liveness::Alive)].into(),
            departed: BTreeMap::new(),
            fencing: BTreeSet::new(),
        }
    }

    fn last_kinds(state: &ClusterState) -> Vec<&'static str> {
        classify(state.events.back().expect("an event"))
    }

    #[test]
    fn a_package_moved_off_a_node_that_lost_its_lease_is_a_failover() {
        let mut state = running_on_n1();
        assert_eq!(last_kinds(&state), vec!["package"]);
        let actions = plan(&state, &view(Liveness::Expired), 10);
        let [Action::Propose(command)] = actions.as_slice() else { panic!("one assignment expected: {actions:?}") };
        assert_eq!(state.apply(command), CommandOutcome::Applied);
        let event = state.events.back().unwrap();
        assert_eq!(event.node.as_deref(), Some("n2"), "{event:?}");
        assert_eq!(classify(event), vec!["failover", "package"]);
    }

    #[test]
    fn a_fenced_node_and_its_packages_are_classified() {
        let mut state = running_on_n1();
        let fenced = Command::NodeFenced { node: "n1".into(), owned: [("web".to_owned(), 1)].into(), at_ms: 10 };
        assert_eq!(state.apply(&fenced), CommandOutcome::Applied);
        let events: Vec<_> = state.events.iter().rev().take(2).collect();
        assert_eq!(classify(events[0]), vec!["fence", "node"]);
        assert_eq!(events[1].what, "running -> stopped");
        assert_eq!(classify(events[1]), vec!["failover", "package"]);
    }

    #[test]
    fn a_failed_stop_is_blocked_and_an_exhausted_budget_fails_over() {
        let mut state = running_on_n1();
        let failed = |report| Command::Report { package: "web".into(), node: "n1".into(), epoch: 1, report, at_ms: 20 };
        let report = Report::ResourceFailed { resource: "p".into(), reason: "exited".into() };
        assert_eq!(state.apply(&failed(report)), CommandOutcome::Applied);
        assert_eq!(last_kinds(&state), vec!["failover", "package"], "{:?}", state.events.back());
        assert_eq!(state.apply(&failed(Report::StopFailed { reason: "busy".into() })), CommandOutcome::Applied);
        assert_eq!(last_kinds(&state), vec!["blocked", "package"]);
    }

    #[test]
    fn operator_events_are_package_or_node_events_only() {
        let mut state = running_on_n1();
        state.apply(&Command::PkgFreeze { name: "web".into(), frozen: true, at_ms: 5 });
        assert_eq!(last_kinds(&state), vec!["package"]);
        state.apply(&Command::NodeStandby { name: "n2".into(), standby: true, at_ms: 6 });
        assert_eq!(last_kinds(&state), vec!["node"]);
    }

    #[test]
    fn the_first_hook_starts_after_the_history_and_the_mark_only_moves_forward() {
        let mut state = running_on_n1();
        let seen = state.next_event;
        assert_eq!(set_alert(&mut state, "/usr/local/bin/notify", Some(&hook(&["failover"]))), CommandOutcome::Applied);
        assert_eq!(state.alerts.next, seen);
        assert_eq!(delivered(&mut state, seen - 1), CommandOutcome::Applied);
        assert_eq!(state.alerts.next, seen);
        assert!(wants(&state.alerts.hooks["/usr/local/bin/notify"], &["failover", "package"]));
        assert!(!wants(&state.alerts.hooks["/usr/local/bin/notify"], &["package"]));
        let removed = set_alert(&mut state, "/usr/local/bin/other", None);
        assert_eq!(
            removed,
            CommandOutcome::Rejected { reason: "alert hook /usr/local/bin/other is not configured".into() }
        );
    }

    #[test]
    fn bad_hooks_are_refused_with_the_reason() {
        let mut state = ClusterState::default();
        let outcome = set_alert(&mut state, "notify", Some(&hook(&["failover"])));
        assert_eq!(
            outcome,
            CommandOutcome::Rejected {
                reason: "alert hook `notify`: expected an absolute path to an executable".into()
            }
        );
        let err = validate_hook("/bin/x", &hook(&["failovers"])).unwrap_err();
        assert!(
            err.starts_with("alert hook /bin/x: unknown event kind `failovers`: expected one of failover, fence"),
            "{err}"
        );
        let err = validate_hook("/bin/x", &AlertHook { timeout_ms: 10, ..hook(&["fence"]) }).unwrap_err();
        assert_eq!(err, "alert hook /bin/x: timeout of 10 ms: expected between 1 s and 600 s");
        assert!(state.alerts.hooks.is_empty());
    }
}
