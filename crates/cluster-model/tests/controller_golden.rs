//! Golden tests of the controller: a state and a lease view in, the plan (or its explanation) out.
//! Re-bless with `UPDATE_EXPECT=1 cargo test -p cluster-model --test controller_golden`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use cluster_model::controller::{explain, plan, waiting_reason, Action, Liveness, View};
use cluster_model::{ClusterState, Command, FenceConfig, NodeRecord, Phase, Report, Role};

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
        self.state.apply(&Command::PkgApply { def: Arc::new(def), at_ms: 0 });
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

    /// `name` on `owner`, started and reported running, then stopped by a stop of the package.
    fn stopped(mut self, name: &str) -> Scenario {
        self.apply(Command::PkgStop { name: name.into(), at_ms: 3 });
        let epoch = self.state.packages[name].epoch;
        let owner = self.state.packages[name].owner.clone().expect("an owner");
        self.apply(Command::Assign {
            package: name.into(),
            expected_epoch: epoch,
            owner: Some(owner.clone()),
            phase: Phase::Stopping,
            reason: "setup".into(),
            at_ms: 4,
        });
        self.apply(Command::Report { package: name.into(), node: owner, epoch, report: Report::Stopped, at_ms: 5 });
        self
    }

    /// The owner of instance `key` reports a promotion score.
    fn score(mut self, key: &str, score: i64) -> Scenario {
        let package = &self.state.packages[key];
        let (node, epoch) = (package.owner.clone().expect("an owner"), package.epoch);
        self.apply(Command::Report {
            package: key.into(),
            node,
            epoch,
            report: Report::Score { score: Some(score) },
            at_ms: 6,
        });
        self
    }

    /// Instance `key` promoted by the controller and by its owner.
    fn primary(mut self, key: &str) -> Scenario {
        let package = &self.state.packages[key];
        let (node, epoch) = (package.owner.clone().expect("an owner"), package.epoch);
        self.apply(Command::SetRole {
            package: key.into(),
            expected_epoch: epoch,
            role: Role::Promoting,
            reason: "setup".into(),
            at_ms: 7,
        });
        self.apply(Command::Report { package: key.into(), node, epoch, report: Report::Promoted, at_ms: 8 });
        self
    }

    fn capacity(mut self, node: &str, capacity: &[(&str, u64)]) -> Scenario {
        let capacity = capacity.iter().map(|(name, value)| (name.to_string(), *value)).collect();
        self.apply(Command::NodeCapacity { name: node.into(), capacity, at_ms: 0 });
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
            Action::Propose(Command::SetRole { package, expected_epoch, role, reason, .. }) => {
                text.push_str(&format!("role {package} at epoch {expected_epoch}: {} — {reason}\n", role.as_str()));
            }
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

/// Issue 12: a witness is a voter that never hosts packages, whatever the package's node list says.
#[test]
fn witnesses() {
    let witness = |name: &str| Command::NodeRole { name: name.into(), witness: true, at_ms: 3 };
    check_plan("a_witness_is_not_placed_on", &Scenario::new().package("web", "").with(witness("n1")));
    check_plan(
        "a_witness_is_not_placed_on_even_by_a_package_of_every_node",
        &Scenario::new().package("web", "").with(Command::PkgApply {
            def: Arc::new(
                cluster_package::parse_package(
                    "p.toml",
                    "name = \"web\"\n[[resource]]\nname = \"vip\"\ntype = \"ip\"\naddress = \"192.0.2.100/24\"\ninterface = \"eth0\"\n",
                )
                .unwrap(),
            ),
            at_ms: 2,
        })
        .with(witness("n1")),
    );
    check_plan(
        "a_node_made_a_witness_is_drained",
        &Scenario::new().package("web", "").running_on("web", "n1").with(witness("n1")),
    );
    check_plan(
        "with_both_package_nodes_gone_a_package_waits_off_the_witness",
        &Scenario::new()
            .package("web", "")
            .running_on("web", "n1")
            .with(witness("n3"))
            .lease("n1", Liveness::Expired)
            .lease("n2", Liveness::Expired),
    );
    let scenario = Scenario::new().package("web", "").running_on("web", "n1").with(witness("n3"));
    check("explain_a_witness", &(explain(&scenario.state, &scenario.view, "web", NOW).unwrap().join("\n") + "\n"));
    let mut state = Scenario::new().package("web", "auto_run = false").with(witness("n3")).state;
    let refused = state.apply(&Command::PkgRun { name: "web".into(), node: Some("n3".into()), at_ms: 4 });
    assert_eq!(
        refused,
        cluster_model::CommandOutcome::Rejected { reason: "node `n3` is a witness: it never hosts packages".into() }
    );
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

const SAME_NODE_DB: &str = "depends = [{ package = \"db\", where = \"same-node\" }]";
const ANY_NODE_DB: &str = "depends = [{ package = \"db\", where = \"any-node\" }]";
const DIFFERENT_NODE_DB: &str = "depends = [{ package = \"db\", where = \"different-node\" }]";

fn explained(scenario: &Scenario, name: &str) -> String {
    explain(&scenario.state, &scenario.view, name, NOW).unwrap().join("\n") + "\n"
}

#[test]
fn dependencies() {
    let pair = |where_: &str| Scenario::new().package("db", "").package("app", where_);
    check_plan("a_dependent_waits_for_what_it_depends_on", &pair(SAME_NODE_DB));
    check_plan("a_dependent_is_placed_where_its_dependency_runs", &pair(SAME_NODE_DB).running_on("db", "n2"));
    check_plan(
        "an_any_node_dependent_takes_its_own_first_node_once_the_dependency_runs",
        &pair(ANY_NODE_DB).running_on("db", "n2"),
    );
    check_plan(
        "a_different_node_dependent_avoids_the_node_of_its_dependency",
        &pair(DIFFERENT_NODE_DB).running_on("db", "n1"),
    );
    check_plan(
        "a_package_is_not_placed_where_a_package_that_must_avoid_it_runs",
        &pair(DIFFERENT_NODE_DB).running_on("db", "n2").running_on("app", "n1").lease("n2", Liveness::Expired),
    );
    let both_on_n1 = || pair(SAME_NODE_DB).running_on("db", "n1").running_on("app", "n1");
    check_plan("a_running_same_node_pair_stays", &both_on_n1());
    check_plan(
        "stopping_a_dependency_stops_its_dependents_first",
        &both_on_n1().with(Command::PkgStop { name: "db".into(), at_ms: 3 }),
    );
    check_plan(
        "the_dependency_stops_once_its_dependents_have_stopped",
        &both_on_n1()
            .stopped("app")
            .with(Command::PkgRun { name: "app".into(), node: None, at_ms: 4 })
            .with(Command::PkgStop { name: "db".into(), at_ms: 5 }),
    );
    check_plan(
        "moving_a_dependency_stops_its_dependents_first",
        &both_on_n1().with(Command::PkgMove { name: "db".into(), to: "n3".into(), at_ms: 3 }),
    );
    check_plan(
        "standby_drains_the_dependent_of_a_pair_first",
        &both_on_n1().with(Command::NodeStandby { name: "n1".into(), standby: true, at_ms: 3 }),
    );
    check_plan("a_dead_node_of_a_same_node_pair_moves_the_dependency_and_stops_the_dependent", &{
        both_on_n1().lease("n1", Liveness::Expired)
    });
    check_plan(
        "a_dependent_on_another_node_stops_when_its_dependency_is_lost",
        &pair(ANY_NODE_DB).running_on("db", "n1").running_on("app", "n2").lease("n1", Liveness::Expired),
    );
    check_plan(
        "a_dependency_stops_only_after_the_whole_chain_above_it",
        &Scenario::new()
            .package("db", "")
            .package("app", SAME_NODE_DB)
            .package("web", "depends = [{ package = \"app\", where = \"any-node\" }]")
            .running_on("db", "n1")
            .running_on("app", "n1")
            .running_on("web", "n2")
            .with(Command::PkgStop { name: "db".into(), at_ms: 3 }),
    );
    check_plan(
        "a_dependent_must_leave_a_node_shared_with_a_package_it_must_avoid",
        &pair(ANY_NODE_DB).running_on("db", "n2").running_on("app", "n2").package("app", DIFFERENT_NODE_DB),
    );
    check("explain_dependencies", &explained(&pair(SAME_NODE_DB).running_on("db", "n2"), "app"));
    check(
        "explain_a_dependency_waiting_for_its_dependents",
        &explained(&both_on_n1().with(Command::PkgStop { name: "db".into(), at_ms: 3 }), "db"),
    );
}

#[test]
fn capacity() {
    let memory = |gib: u64| gib << 30;
    let full = || {
        Scenario::new()
            .capacity("n1", &[("memory", memory(8))])
            .capacity("n2", &[("memory", memory(4)), ("slots", 1)])
            .package("big", "needs = { memory = \"6G\" }")
            .running_on("big", "n1")
    };
    check_plan("capacity_keeps_a_package_off_a_full_node", &full().package("web", "needs = { memory = \"4G\" }"));
    check_plan(
        "a_node_without_a_declared_capacity_is_unlimited",
        &full().package("web", "needs = { memory = \"64G\" }"),
    );
    let nowhere = full().package("web", "needs = { memory = \"4G\", slots = 2 }").with(Command::NodeStandby {
        name: "n3".into(),
        standby: true,
        at_ms: 3,
    });
    check_plan("a_package_that_fits_nowhere_is_not_placed", &nowhere);
    check("explain_a_package_that_fits_nowhere", &explained(&nowhere, "web"));
    assert_eq!(
        waiting_reason(&nowhere.state, &nowhere.view, "web", NOW).as_deref(),
        Some(
            "fits nowhere: n1: not enough memory: needs 4G, 2G free of 8G; n2: not enough slots: needs 2, 1 free of 1; \
             n3: in standby"
        )
    );
    assert_eq!(waiting_reason(&full().state, &full().view, "big", NOW), None);
    // Two packages placed by one plan count against each other.
    check_plan(
        "one_plan_does_not_overfill_a_node",
        &Scenario::new()
            .capacity("n1", &[("slots", 1)])
            .package("a", "needs = { slots = 1 }")
            .package("b", "needs = { slots = 1 }"),
    );
}

#[test]
fn instances() {
    check_plan("instances_are_placed_on_different_nodes", &Scenario::new().package("db", "instances = 2"));
    let two = || Scenario::new().package("db", "instances = 2").running_on("db:0", "n1").running_on("db:1", "n2");
    check_plan("running_instances_stay", &two());
    check_plan("the_instance_of_a_dead_node_moves_to_a_node_without_one", &two().lease("n1", Liveness::Expired));
    check_plan(
        "with_an_instance_on_every_node_the_instance_of_a_dead_node_stops",
        &Scenario::new()
            .package("db", "instances = 3")
            .running_on("db:0", "n1")
            .running_on("db:1", "n2")
            .running_on("db:2", "n3")
            .lease("n1", Liveness::Expired),
    );
    check_plan("instances_on_all_nodes_are_bound_to_their_node", &{
        Scenario::new().package("agent", "instances = \"all\"").lease("n3", Liveness::Expired)
    });
    check("explain_instances", &explained(&two().lease("n2", Liveness::Expired), "db"));
}

fn promotable(extra: &str) -> String {
    format!(
        "instances = 2\npromotable = {{ primaries = 1 }}\n{extra}\n[[resource]]\nname = \"data\"\ntype = \"ocf\"\nagent = \"heartbeat:Stateful\"\n"
    )
}

#[test]
fn promotion() {
    let replicas = || Scenario::new().package("db", &promotable("")).running_on("db:0", "n1").running_on("db:1", "n2");
    check_plan("no_promotion_before_the_agents_set_a_score", &replicas());
    check_plan("the_replica_with_the_highest_score_is_promoted", &replicas().score("db:0", 5).score("db:1", 10));
    check_plan("a_negative_score_is_never_promoted", &replicas().score("db:0", -1).score("db:1", -5));
    let with_primary = || replicas().score("db:0", 10).score("db:1", 5).primary("db:0");
    check_plan("one_primary_is_enough", &with_primary());
    check_plan(
        "a_lost_primary_is_replaced_in_the_same_plan",
        &with_primary()
            .with(Command::NodeStandby { name: "n3".into(), standby: true, at_ms: 9 })
            .lease("n1", Liveness::Expired),
    );
    check_plan("a_primary_whose_lease_is_unknown_is_waited_for", &with_primary().lease("n1", Liveness::Unknown));
    check_plan(
        "a_stopping_primary_still_counts",
        &with_primary().with(Command::NodeStandby { name: "n1".into(), standby: true, at_ms: 9 }),
    );
    // A promotion by built-in resources only (a VIP) needs no score.
    let vip_only = Scenario::new()
        .package("vip", "instances = 2\npromotable = { primary_only = [\"extra\"] }\n[[resource]]\nname = \"extra\"\ntype = \"ip\"\naddress = \"192.0.2.101/24\"\ninterface = \"eth0\"")
        .running_on("vip:0", "n1")
        .running_on("vip:1", "n2");
    check_plan("primary_only_resources_need_no_score", &vip_only);
    // Two primaries (as after a redefinition lowered `primaries` from 2 to 1): the lower score is demoted.
    let mut lowered = with_primary();
    lowered.state.packages.get_mut("db:1").unwrap().role = Role::Primary;
    check_plan("more_primaries_than_wanted_demotes_the_lowest_score", &lowered);
    check("explain_promotion", &explained(&with_primary().lease("n1", Liveness::Expired), "db"));
}
