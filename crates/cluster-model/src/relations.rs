//! Relations between packages, judged on the replicated state: instances, dependencies, anti-affinity,
//! capacity and the count of primaries. The state machine uses them to refuse an assignment or a
//! promotion that would break a relation (so that a stale plan, or two leaders' plans, cannot), and
//! the controller to place packages; both read them through an [`Occupancy`], the controller's with
//! its own plan laid over the state.
//!
//! ```text
//!   instances:  web (one instance)       db:0 db:1 db:2 (instances = 3)      agent:n1 agent:n2 (instances = "all")
//!   a node may take instance K of package D when, by the occupancy:
//!     no other instance of D may be active there                              (instances never share a node)
//!     nothing D must not share a node with may be active there                (different-node, both ways)
//!     every dependency of D runs where it must (same-node: there; any-node: anywhere; different-node: elsewhere)
//!     D's `needs` fit in what the node declares, after what may be active there
//! ```

use std::collections::BTreeMap;

use cluster_package::{format_quantity, Instances, Location, PackageDef};

use crate::package::PackageState;
use crate::ClusterState;

/// The key of instance `suffix` of package `name` in [`ClusterState::packages`] (`db:0`, `agent:n1`).
/// Package and node names never contain `:`.
pub fn instance_key(name: &str, suffix: &str) -> String {
    format!("{name}:{suffix}")
}

/// The package a key belongs to (`db` for `db:0`).
pub fn package_of(key: &str) -> &str {
    key.split_once(':').map_or(key, |(name, _)| name)
}

/// The node an instance of an `instances = "all"` package is bound to.
pub fn bound_node<'a>(package: &PackageState, key: &'a str) -> Option<&'a str> {
    (package.def.instances == Instances::All).then(|| key.split_once(':').map(|(_, node)| node)).flatten()
}

impl ClusterState {
    /// The instances of package `name` (its own entry for a package with one instance), in key order.
    pub fn instances<'a>(&'a self, name: &str) -> impl Iterator<Item = (&'a String, &'a PackageState)> + 'a {
        let single = self.packages.get_key_value(name);
        let prefix = format!("{name}:");
        let end = format!("{name};");
        single.into_iter().chain(self.packages.range(prefix..end))
    }

    /// The keys an operator command names: the instance itself (`db:1`), or every instance of a package.
    pub fn keys_named(&self, name: &str) -> Vec<String> {
        self.instances(name).map(|(key, _)| key.clone()).collect()
    }
}

/// Where packages may be active and where they run: the replicated state, or the controller's plan
/// laid over it (which also keeps indexes, to stay cheap at a thousand packages).
pub(crate) trait Occupancy {
    /// The node instance `key` may be active on.
    fn occupies<'s>(&'s self, key: &str, package: &'s PackageState) -> Option<&'s str>;
    /// The node instance `key` runs on (phase `running`).
    fn runs_on<'s>(&'s self, key: &str, package: &'s PackageState) -> Option<&'s str>;
    /// The packages that declare a `different-node` dependency on package `name`.
    fn avoided_by<'s>(&'s self, state: &'s ClusterState, name: &str) -> Vec<&'s str> {
        let mut names: Vec<&str> = state
            .packages
            .values()
            .filter(|other| {
                other.def.dependency_on(name).is_some_and(|dependency| dependency.location == Location::DifferentNode)
            })
            .map(|other| other.def.name.as_str())
            .collect();
        names.dedup();
        names
    }
    /// What each capacity of `node` has in use (every instance but `except`).
    fn used_on(&self, state: &ClusterState, node: &str, except: &str) -> BTreeMap<String, u64> {
        capacity_used(state, self, node, except)
    }
    /// The packages that declare a dependency on package `name`.
    fn dependents_of<'s>(&'s self, state: &'s ClusterState, name: &str) -> Vec<&'s str> {
        let mut names: Vec<&str> = state
            .packages
            .values()
            .filter(|other| other.def.dependency_on(name).is_some())
            .map(|other| other.def.name.as_str())
            .collect();
        names.dedup();
        names
    }
}

/// The replicated state as it is.
pub(crate) struct AsApplied;

impl Occupancy for AsApplied {
    fn occupies<'s>(&'s self, _key: &str, package: &'s PackageState) -> Option<&'s str> {
        package.occupies()
    }

    fn runs_on<'s>(&'s self, _key: &str, package: &'s PackageState) -> Option<&'s str> {
        package.running_on()
    }
}

/// Why `dependency` is not met for an instance on `node` by the replicated state as it is (what
/// an executor checks before it starts a dependent), or `None`.
pub fn unmet_dependency(state: &ClusterState, dependency: &cluster_package::Dependency, node: &str) -> Option<String> {
    dependency_unmet(state, &AsApplied, dependency, node)
}

/// How a dependency is met, or why not.
pub(crate) fn dependency_unmet<O: Occupancy + ?Sized>(
    state: &ClusterState,
    occupancy: &O,
    dependency: &cluster_package::Dependency,
    node: &str,
) -> Option<String> {
    let running: Vec<&str> =
        state.instances(&dependency.package).filter_map(|(key, package)| occupancy.runs_on(key, package)).collect();
    let met = match dependency.location {
        Location::SameNode => running.contains(&node),
        Location::AnyNode => !running.is_empty(),
        Location::DifferentNode => running.iter().any(|other| *other != node),
    };
    if met {
        return None;
    }
    let name = &dependency.package;
    Some(match (dependency.location, running.as_slice()) {
        (_, []) => format!("depends on {name} ({}), which is not running", dependency.location.as_str()),
        (Location::SameNode, _) => {
            format!("depends on {name} (same-node), which runs on {} and not here", running.join(", "))
        }
        (_, _) => format!("depends on {name} (different-node), which runs only here"),
    })
}

/// Why `node` may not take instance `key` of `def` now, by `occupancy`: a sibling instance, a package
/// it must not share a node with, an unmet dependency, or not enough capacity. `None`: it may.
pub(crate) fn placement_refusal<O: Occupancy + ?Sized>(
    state: &ClusterState,
    occupancy: &O,
    key: &str,
    def: &PackageDef,
    node: &str,
) -> Option<String> {
    let name = def.name.as_str();
    if def.multi_instance() {
        for (other, package) in state.instances(name) {
            if other != key && occupancy.occupies(other, package) == Some(node) {
                return Some(format!("instance {other} of {name} is there"));
            }
        }
    }
    for (other, package) in conflicting(state, occupancy, def) {
        if occupancy.occupies(other, package) == Some(node) {
            return Some(format!("{other} is there, and {name} must not share a node with {}", package.def.name));
        }
    }
    for dependency in &def.depends {
        if let Some(why) = dependency_unmet(state, occupancy, dependency, node) {
            return Some(why);
        }
    }
    capacity_shortfall(state, occupancy, key, def, node)
}

/// The instances `def` must never share a node with: those of the packages it has a `different-node`
/// dependency on, and those of the packages that have one on it.
pub(crate) fn conflicting<'s, O: Occupancy + ?Sized>(
    state: &'s ClusterState,
    occupancy: &'s O,
    def: &'s PackageDef,
) -> impl Iterator<Item = (&'s String, &'s PackageState)> + 's {
    let declared = def
        .depends
        .iter()
        .filter(|dependency| dependency.location == Location::DifferentNode)
        .map(|dependency| dependency.package.as_str());
    let declaring = occupancy.avoided_by(state, &def.name);
    declared.chain(declaring).flat_map(move |name| state.instances(name))
}

/// What each capacity of `node` has in use, by `occupancy` (every instance but `except`).
pub(crate) fn capacity_used<O: Occupancy + ?Sized>(
    state: &ClusterState,
    occupancy: &O,
    node: &str,
    except: &str,
) -> BTreeMap<String, u64> {
    let mut used = BTreeMap::new();
    for (key, package) in &state.packages {
        if key != except && !package.def.needs.is_empty() && occupancy.occupies(key, package) == Some(node) {
            for (capacity, need) in &package.def.needs {
                *used.entry(capacity.clone()).or_insert(0u64) += need;
            }
        }
    }
    used
}

/// Why `def`'s needs do not fit on `node`, if they do not.
fn capacity_shortfall<O: Occupancy + ?Sized>(
    state: &ClusterState,
    occupancy: &O,
    key: &str,
    def: &PackageDef,
    node: &str,
) -> Option<String> {
    let capacity = &state.nodes.get(node)?.capacity;
    if def.needs.keys().all(|name| !capacity.contains_key(name)) {
        return None;
    }
    let used = occupancy.used_on(state, node, key);
    shortfall(&def.needs, capacity, &used)
}

/// Why `needs` does not fit in `capacity` with `used` taken, if it does not.
pub(crate) fn shortfall(
    needs: &BTreeMap<String, u64>,
    capacity: &BTreeMap<String, u64>,
    used: &BTreeMap<String, u64>,
) -> Option<String> {
    for (name, need) in needs {
        let Some(total) = capacity.get(name) else { continue };
        let free = total.saturating_sub(used.get(name).copied().unwrap_or(0));
        if *need > free {
            return Some(format!(
                "not enough {name}: needs {}, {} free of {}",
                format_quantity(*need),
                format_quantity(free),
                format_quantity(*total)
            ));
        }
    }
    None
}

/// The instances of other packages that still need instance `key` of `package` on `owner` (they may
/// be active, depend on it, and no other instance of it would do): an orderly stop of `key` waits
/// until they have stopped.
pub(crate) fn dependents_relying<'s, O: Occupancy + ?Sized>(
    state: &'s ClusterState,
    occupancy: &'s O,
    key: &str,
    package: &PackageState,
    owner: &str,
) -> Vec<&'s str> {
    let name = package.def.name.as_str();
    let mut relying = Vec::new();
    for dependent_name in occupancy.dependents_of(state, name) {
        for (dependent_key, dependent) in state.instances(dependent_name) {
            let Some(at) = occupancy.occupies(dependent_key, dependent) else { continue };
            let Some(dependency) = dependent.def.dependency_on(name) else { continue };
            let serves = |node: &str| match dependency.location {
                Location::SameNode => node == at,
                Location::AnyNode => true,
                Location::DifferentNode => node != at,
            };
            let elsewhere = state.instances(name).any(|(other, other_package)| {
                other != key && occupancy.runs_on(other, other_package).is_some_and(serves)
            });
            if serves(owner) && !elsewhere {
                relying.push(dependent_key.as_str());
            }
        }
    }
    relying
}

/// The instances of `name` that may be promoted (every role but replica).
pub(crate) fn primaries(state: &ClusterState, name: &str) -> usize {
    state.instances(name).filter(|(_, package)| package.role.may_be_primary()).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::Phase;
    use crate::{Command, Report};
    use std::sync::Arc;

    fn def(name: &str, extra: &str) -> PackageDef {
        let text = format!(
            "name = \"{name}\"\n{extra}\n[[resource]]\nname = \"vip\"\ntype = \"ip\"\naddress = \"192.0.2.1/24\"\ninterface = \"eth0\"\n"
        );
        cluster_package::parse_package("p.toml", &text).expect("valid package")
    }

    fn running(state: &mut ClusterState, key: &str, node: &str) {
        let epoch = state.packages[key].epoch;
        let assign = Command::Assign {
            package: key.into(),
            expected_epoch: epoch,
            owner: Some(node.into()),
            phase: Phase::Starting,
            reason: "test".into(),
            at_ms: 1,
        };
        assert_eq!(state.apply(&assign), crate::CommandOutcome::Applied);
        let report = Report::Running { resources: vec![] };
        let report = Command::Report { package: key.into(), node: node.into(), epoch: epoch + 1, report, at_ms: 2 };
        assert_eq!(state.apply(&report), crate::CommandOutcome::Applied);
    }

    #[test]
    fn keys_name_instances_of_a_package_and_nothing_else() {
        assert_eq!(instance_key("db", "0"), "db:0");
        assert_eq!(package_of("db:0"), "db");
        assert_eq!(package_of("db"), "db");
        let mut state = ClusterState::default();
        for text in [def("db", "instances = 2"), def("db2", ""), def("d", "")] {
            state.apply(&Command::PkgApply { def: Arc::new(text), at_ms: 0 });
        }
        assert_eq!(state.keys_named("db"), ["db:0", "db:1"]);
        assert_eq!(state.keys_named("db:1"), ["db:1"]);
        assert_eq!(state.keys_named("d"), ["d"]);
        assert!(state.keys_named("nope").is_empty());
    }

    #[test]
    fn a_node_is_refused_for_siblings_conflicts_dependencies_and_capacity() {
        let mut state = ClusterState::default();
        state.nodes.entry("n2".into()).or_default().capacity = BTreeMap::from([("memory".into(), 8 << 30)]);
        for text in [
            def("db", "instances = 2\nneeds = { memory = \"6G\" }"),
            def("app", "depends = [{ package = \"db\", where = \"same-node\" }]"),
            def("batch", "depends = [{ package = \"db\", where = \"different-node\" }]\nneeds = { memory = \"4G\" }"),
        ] {
            state.apply(&Command::PkgApply { def: Arc::new(text), at_ms: 0 });
        }
        running(&mut state, "db:0", "n1");
        let refusal_in = |state: &ClusterState, key: &str, node: &str| {
            let def = state.packages[key].def.clone();
            placement_refusal(state, &AsApplied, key, &def, node)
        };
        let refusal = |key: &str, node: &str| refusal_in(&state, key, node);
        assert_eq!(refusal("db:1", "n1").as_deref(), Some("instance db:0 of db is there"));
        assert_eq!(refusal("db:1", "n2"), None);
        assert_eq!(refusal("app", "n1"), None);
        assert_eq!(refusal("app", "n2").as_deref(), Some("depends on db (same-node), which runs on n1 and not here"));
        assert_eq!(refusal("batch", "n1").as_deref(), Some("db:0 is there, and batch must not share a node with db"));
        assert_eq!(refusal("batch", "n3"), None);
        running(&mut state, "db:1", "n2");
        let refusal = |key: &str, node: &str| refusal_in(&state, key, node);
        assert_eq!(refusal("batch", "n2").as_deref(), Some("db:1 is there, and batch must not share a node with db"));
        running(&mut state, "batch", "n3");
        // The other side of the anti-affinity: db may not come where batch is.
        let db = state.packages["db:0"].def.clone();
        assert_eq!(
            placement_refusal(&state, &AsApplied, "db:0", &db, "n3").as_deref(),
            Some("batch is there, and db must not share a node with batch")
        );
        assert_eq!(primaries(&state, "db"), 0);
    }

    /// A failure beyond the restart budget of a package others depend on bans its node but leaves
    /// it active: the controller stops the dependents first, then it (found by the simulation,
    /// lease-only seed 176 after issue 14: `app` stopped while `web` still ran on another node).
    #[test]
    fn a_failure_beyond_the_budget_waits_for_the_dependents_to_stop() {
        let mut state = ClusterState::default();
        for text in [
            def("app", "restart = { max = 0 }"),
            def("web", "depends = [{ package = \"app\", where = \"any-node\" }]"),
            def("lone", "restart = { max = 0 }"),
        ] {
            state.apply(&Command::PkgApply { def: Arc::new(text), at_ms: 0 });
        }
        running(&mut state, "app", "n1");
        running(&mut state, "web", "n2");
        running(&mut state, "lone", "n1");
        let failed = |state: &mut ClusterState, key: &str| {
            let epoch = state.packages[key].epoch;
            let report = Report::ResourceFailed { resource: "vip".into(), reason: "gone".into() };
            let command = Command::Report { package: key.into(), node: "n1".into(), epoch, report, at_ms: 3 };
            assert_eq!(state.apply(&command), crate::CommandOutcome::Applied);
        };
        failed(&mut state, "app");
        let app = &state.packages["app"];
        assert_eq!((app.phase, app.owner.as_deref()), (Phase::Running, Some("n1")), "web still needs app");
        assert!(app.banned.contains("n1") && app.stopping_after_failure);
        failed(&mut state, "lone");
        assert_eq!(state.packages["lone"].phase, Phase::Stopping, "nothing depends on lone: it stops at once");
        // The controller moves web away first, then app, whose stop ends in `failed`.
        let view = crate::controller::View {
            nodes: ["n1", "n2", "n3"].into_iter().map(|n| (n.to_owned(), crate::controller::Liveness::Alive)).collect(),
            ..crate::controller::View::default()
        };
        let planned = |state: &ClusterState| -> Vec<String> {
            crate::controller::plan(state, &view, 4)
                .into_iter()
                .filter_map(|action| match action {
                    crate::controller::Action::Propose(Command::Assign { package, phase: Phase::Stopping, .. }) => {
                        Some(package)
                    }
                    _ => None,
                })
                .collect()
        };
        assert_eq!(planned(&state), ["web"], "only the dependent stops first");
        let epoch = state.packages["web"].epoch;
        let stop = |package: &str, node: &str, epoch| Command::Assign {
            package: package.into(),
            expected_epoch: epoch,
            owner: Some(node.into()),
            phase: Phase::Stopping,
            reason: "test".into(),
            at_ms: 5,
        };
        assert!(matches!(
            state.apply(&stop("app", "n1", state.packages["app"].epoch)),
            crate::CommandOutcome::Rejected { .. }
        ));
        assert_eq!(state.apply(&stop("web", "n2", epoch)), crate::CommandOutcome::Applied);
        let stopped =
            Command::Report { package: "web".into(), node: "n2".into(), epoch, report: Report::Stopped, at_ms: 6 };
        assert_eq!(state.apply(&stopped), crate::CommandOutcome::Applied);
        assert!(planned(&state).contains(&"app".to_owned()), "app leaves its banned node once web stopped");
        let epoch = state.packages["app"].epoch;
        assert_eq!(state.apply(&stop("app", "n1", epoch)), crate::CommandOutcome::Applied);
        let stopped =
            Command::Report { package: "app".into(), node: "n1".into(), epoch, report: Report::Stopped, at_ms: 7 };
        assert_eq!(state.apply(&stopped), crate::CommandOutcome::Applied);
        assert_eq!(state.packages["app"].phase, Phase::Failed);
    }

    #[test]
    fn capacity_counts_what_may_be_active() {
        let needs = BTreeMap::from([("memory".to_owned(), 4 << 30), ("gpu".to_owned(), 1)]);
        let capacity = BTreeMap::from([("memory".to_owned(), 8 << 30)]);
        assert_eq!(shortfall(&needs, &capacity, &BTreeMap::new()), None, "gpu is not declared: unlimited");
        let used = BTreeMap::from([("memory".to_owned(), 5 << 30)]);
        assert_eq!(shortfall(&needs, &capacity, &used).as_deref(), Some("not enough memory: needs 4G, 3G free of 8G"));
    }
}
