//! Golden tests of the controller: a state and a lease view in, the plan (or its explanation) out.
//! Re-bless with `UPDATE_EXPECT=1 cargo test -p cluster-model --test controller_golden`.

use std::collections::BTreeMap;
use std::path::Path;

use cluster_model::controller::{explain, plan, Action, Liveness, View};
use cluster_model::{ClusterState, Command, FenceConfig, NodeRecord, Phase, Report};

const NOW: u64 = 1_000_000;

fn package_text(name: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nnodes = [\"n1\", \"n2\", \"n3\"]\n{extra}\n[[resource]]\nname = \"vip\"\ntype = \"ip\"\n\
         address = \"192.0.2.100/24\"\ninterface = \"eth0\"\n"
    )
}

struct Scenario {
    state: ClusterState,
    view: View,
}

impl Scenario {
    fn new() -> Scenario {
        let mut state = ClusterState::default();
        for node in ["n1", "n2", "n3"] {
            state.nodes.insert(node.into(), NodeRecord { watchdog: true, ..NodeRecord::default() });
        }
        let nodes = ["n1", "n2", "n3"].iter().map(|n| (n.to_string(), Liveness::Alive)).collect();
        Scenario { state, view: View { nodes, ..View::default() } }
    }

    fn package(mut self, name: &str, extra: &str) -> Scenario {
        let def = cluster_package::parse_package("p.toml", &package_text(name, extra)).expect("valid package");
        self.state.apply(&Command::PkgApply { def: Box::new(def), at_ms: 0 });
        self
    }

    /// Puts `name` on `owner` in `phase` through the real commands.
    fn running_on(mut self, name: &str, owner: &str) -> Scenario {
        let epoch = self.state.packages[name].epoch;
        self.apply(Command::Assign {
            package: name.into(),
            expected_epoch: epoch,
            owner: Some(owner.into()),
            phase: Phase::Starting,
            reason: "setup".into(),
            at_ms: 1,
        });
        self.apply(Command::Report {
            package: name.into(),
            node: owner.into(),
            epoch: epoch + 1,
            report: Report::Running { resources: vec![] },
            at_ms: 2,
        });
        self
    }

    fn apply(&mut self, command: Command) {
        let outcome = self.state.apply(&command);
        assert_eq!(outcome, cluster_model::CommandOutcome::Applied, "{command:?}");
    }

    fn with(mut self, command: Command) -> Scenario {
        self.apply(command);
        self
    }

    fn lease(mut self, node: &str, liveness: Liveness) -> Scenario {
        self.view.nodes.insert(node.into(), liveness);
        self
    }

    /// `node` is no longer a member (removed), its lease as the leader's table knows it.
    fn departed(mut self, node: &str, liveness: Liveness) -> Scenario {
        self.view.nodes.remove(node);
        self.view.departed.insert(node.into(), liveness);
        self
    }

    fn no_watchdog(mut self, node: &str) -> Scenario {
        self.state.nodes.get_mut(node).unwrap().watchdog = false;
        self
    }

    fn fence(mut self, node: &str) -> Scenario {
        let fence = FenceConfig { agent: "fence_dummy".into(), params: BTreeMap::new() };
        self.apply(Command::SetFence { node: node.into(), fence: Some(fence) });
        self
    }
}

fn render(actions: &[Action]) -> String {
    let mut text = String::new();
    for action in actions {
        match action {
            Action::Propose(Command::Assign { package, expected_epoch, owner, phase, reason, .. }) => {
                text.push_str(&format!(
                    "assign {package} at epoch {expected_epoch}: {} on {} — {reason}\n",
                    phase.as_str(),
                    owner.as_deref().unwrap_or("no node")
                ));
            }
            Action::Fence { node, reason } => text.push_str(&format!("fence {node} — {reason}\n")),
            Action::Propose(other) => text.push_str(&format!("{other:?}\n")),
        }
    }
    if text.is_empty() {
        text.push_str("(nothing to do)\n");
    }
    text
}

fn check(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/controller").join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing: run with UPDATE_EXPECT=1 to create it", path.display()));
    assert_eq!(actual, expected, "golden file {} differs", path.display());
}

fn check_plan(name: &str, scenario: &Scenario) {
    check(name, &render(&plan(&scenario.state, &scenario.view, NOW)));
}

#[test]
fn placement() {
    check_plan("new_package_goes_to_the_first_node", &Scenario::new().package("web", ""));
    check_plan("not_auto_run_stays_stopped", &Scenario::new().package("web", "auto_run = false"));
    check_plan(
        "first_node_down_goes_to_the_second",
        &Scenario::new().package("web", "").lease("n1", Liveness::Expired),
    );
    check_plan(
        "least_loaded_picks_the_emptiest_node",
        &Scenario::new()
            .package("a", "")
            .package("b", "")
            .running_on("a", "n1")
            .running_on("b", "n1")
            .package("web", "failover = \"least-loaded\""),
    );
    check_plan(
        "standby_node_is_skipped",
        &Scenario::new().package("web", "").with(Command::NodeStandby { name: "n1".into(), standby: true, at_ms: 3 }),
    );
    check_plan(
        "a_preferred_node_with_an_unknown_lease_is_waited_for",
        &Scenario::new()
            .package("web", "")
            .with(Command::NodeStandby { name: "n1".into(), standby: true, at_ms: 3 })
            .lease("n2", Liveness::Unknown),
    );
    check_plan(
        "no_eligible_node_means_no_decision",
        &Scenario::new()
            .package("web", "")
            .lease("n1", Liveness::Expired)
            .lease("n2", Liveness::Expired)
            .lease("n3", Liveness::Unknown),
    );
    check_plan(
        "run_on_a_named_node_whose_lease_is_unknown_waits_for_it",
        &Scenario::new()
            .package("web", "auto_run = false")
            .with(Command::PkgRun { name: "web".into(), node: Some("n3".into()), at_ms: 3 })
            .lease("n3", Liveness::Unknown),
    );
    check_plan(
        "run_on_a_named_node",
        &Scenario::new().package("web", "auto_run = false").with(Command::PkgRun {
            name: "web".into(),
            node: Some("n3".into()),
            at_ms: 3,
        }),
    );
}

#[test]
fn failover() {
    let running = || Scenario::new().package("web", "").running_on("web", "n1");
    check_plan("healthy_owner_keeps_its_package", &running());
    check_plan("expired_owner_with_watchdog_is_replaced", &running().lease("n1", Liveness::Expired));
    check_plan(
        "expired_owner_in_lease_only_mode_is_replaced",
        &running().no_watchdog("n1").lease("n1", Liveness::Expired),
    );
    check_plan(
        "expired_owner_with_only_fencing_is_fenced_first",
        &running().no_watchdog("n1").fence("n1").lease("n1", Liveness::Expired),
    );
    check_plan("owner_not_yet_heard_by_a_new_leader_is_left_alone", &running().lease("n1", Liveness::Unknown));
    check_plan(
        "expired_owner_waits_for_a_preferred_node_whose_lease_is_unknown",
        &running().lease("n1", Liveness::Expired).lease("n2", Liveness::Unknown),
    );
    let mut fencing = running().no_watchdog("n1").fence("n1").lease("n1", Liveness::Expired);
    fencing.view.fencing.insert("n1".into());
    check_plan("a_fence_in_progress_is_not_repeated", &fencing);
    // Regression (issue 11, trap B): a package whose owner was removed from the cluster stayed
    // there forever (its owner was in no view: "unknown" for ever).
    check_plan("a_departed_owner_is_waited_for_while_its_lease_may_run", &running().departed("n1", Liveness::Alive));
    check_plan("a_departed_owner_is_replaced_once_its_lease_expired", &running().departed("n1", Liveness::Expired));
    check_plan(
        "expired_owner_and_nowhere_to_go_stops_the_package",
        &running().lease("n1", Liveness::Expired).lease("n2", Liveness::Expired).lease("n3", Liveness::Expired),
    );
}

#[test]
fn planned_moves() {
    let running = |extra: &str| Scenario::new().package("web", extra).running_on("web", "n1");
    check_plan("stop_requested", &running("").with(Command::PkgStop { name: "web".into(), at_ms: 3 }));
    check_plan(
        "move_stops_the_owner_first",
        &running("").with(Command::PkgMove { name: "web".into(), to: "n3".into(), at_ms: 3 }),
    );
    check_plan(
        "standby_drains_the_owner",
        &running("").with(Command::NodeStandby { name: "n1".into(), standby: true, at_ms: 3 }),
    );
    let leaving = || running("").with(Command::NodeLeave { name: "n1".into(), at_ms: 3 });
    check_plan("a_leaving_owner_is_drained", &leaving());
    check_plan(
        "a_leaving_node_is_not_placed_on",
        &Scenario::new().package("web", "").with(Command::NodeLeave { name: "n1".into(), at_ms: 3 }),
    );
    check_plan(
        "a_node_that_announces_itself_again_is_no_longer_leaving",
        &Scenario::new()
            .package("web", "")
            .with(Command::NodeLeave { name: "n1".into(), at_ms: 3 })
            .with(Command::NodeHello { name: "n1".into(), watchdog: Some("/dev/watchdog".into()), at_ms: 4 }),
    );
    check_plan("frozen_package_is_left_alone", &{
        running("")
            .with(Command::PkgFreeze { name: "web".into(), frozen: true, at_ms: 3 })
            .with(Command::PkgStop { name: "web".into(), at_ms: 4 })
    });
    let on_second = |failback: &str| {
        Scenario::new()
            .package("web", failback)
            .lease("n1", Liveness::Expired)
            .running_on("web", "n2")
            .lease("n1", Liveness::Alive)
    };
    check_plan("failback_auto_returns_to_the_preferred_node", &on_second("failback = \"auto\""));
    check_plan("failback_manual_stays", &on_second("failback = \"manual\""));
}

#[test]
fn blocked_packages() {
    let blocked = || {
        let mut scenario = Scenario::new().package("web", "").running_on("web", "n1");
        let epoch = scenario.state.packages["web"].epoch;
        scenario.apply(Command::Report {
            package: "web".into(),
            node: "n1".into(),
            epoch,
            report: Report::StopFailed { reason: "umount: target is busy".into() },
            at_ms: 5,
        });
        scenario
    };
    check_plan("blocked_without_fencing_waits_for_the_operator", &blocked());
    check_plan("blocked_with_fencing_fences_the_owner", &blocked().fence("n1"));
}

#[test]
fn explanations() {
    let scenario = Scenario::new()
        .package("web", "")
        .running_on("web", "n1")
        .lease("n1", Liveness::Expired)
        .with(Command::NodeStandby { name: "n2".into(), standby: true, at_ms: 3 })
        .no_watchdog("n3");
    check("explain_failover", &(explain(&scenario.state, &scenario.view, "web", NOW).unwrap().join("\n") + "\n"));
    assert!(explain(&scenario.state, &scenario.view, "nope", NOW).is_none());
}
