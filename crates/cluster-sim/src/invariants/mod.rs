//! The invariants the simulator checks, one per file: S1, anti-affinity and the count of primaries
//! after every event, start epochs and dependency order at every start and orderly stop, liveness
//! once at the end of the heal phase.

use std::collections::{BTreeMap, BTreeSet};

use cluster_package::{Dependency, Location, PackageDef};

pub(crate) mod anti_affinity;
pub(crate) mod dependency_order;
pub(crate) mod liveness_after_heal;
pub(crate) mod primaries;
pub(crate) mod s1_single_active;
pub(crate) mod start_epochs;
pub(crate) mod witness_hosts_nothing;

/// Formats a global time in µs as seconds.
pub(crate) fn secs(us: u64) -> String {
    format!("{:.6}s", us as f64 / 1e6)
}

/// The relations between the packages of a run, as their files say (the simulation does not
/// redefine packages).
#[derive(Debug, Default)]
pub(crate) struct Relations {
    /// Package names that must never be active on one node, both ways round.
    pub(crate) conflicts: BTreeSet<(String, String)>,
    /// Packages with several instances: two of them never share a node.
    pub(crate) multi: BTreeSet<String>,
    /// Promotable packages and their `primaries`.
    pub(crate) primaries: BTreeMap<String, usize>,
    /// What each package depends on.
    pub(crate) depends: BTreeMap<String, Vec<Dependency>>,
}

impl Relations {
    pub(crate) fn of(defs: &[PackageDef]) -> Relations {
        let mut relations = Relations::default();
        for def in defs {
            if def.multi_instance() {
                relations.multi.insert(def.name.clone());
            }
            if let Some(promotable) = &def.promotable {
                relations.primaries.insert(def.name.clone(), promotable.primaries as usize);
            }
            for dependency in &def.depends {
                if dependency.location == Location::DifferentNode {
                    relations.conflicts.insert((def.name.clone(), dependency.package.clone()));
                    relations.conflicts.insert((dependency.package.clone(), def.name.clone()));
                }
            }
            if !def.depends.is_empty() {
                relations.depends.insert(def.name.clone(), def.depends.clone());
            }
        }
        relations
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.conflicts.is_empty() && self.multi.is_empty() && self.primaries.is_empty() && self.depends.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::node::{Activity, Node, Record};

    fn node(name: &str, records: &[(&str, Activity, bool)]) -> Node {
        let mut node = Node::new(name.into(), Clock::new(0, 1_000_000), true, false);
        for (key, activity, promoted) in records {
            let record = Record {
                activity: *activity,
                epoch: 1,
                op: 0,
                stop_fails: false,
                since_us: 0,
                reported_us: None,
                op_end_us: 0,
                promoted: *promoted,
                role_op: None,
            };
            node.records.insert((*key).to_owned(), record);
        }
        node
    }

    fn relations() -> Relations {
        let text = |name: &str, extra: &str| {
            format!(
                "name = \"{name}\"\n{extra}\n[[resource]]\nname = \"vip\"\ntype = \"ip\"\naddress = \"192.0.2.1/24\"\ninterface = \"eth0\"\n\
                 [[resource]]\nname = \"data\"\ntype = \"ocf\"\nagent = \"heartbeat:Stateful\"\n"
            )
        };
        let defs: Vec<PackageDef> = [
            text("db", "instances = 2\npromotable = { primaries = 1, primary_only = [\"vip\"] }"),
            text("app", "depends = [{ package = \"db\", where = \"same-node\" }]"),
            text("batch", "depends = [{ package = \"app\", where = \"different-node\" }]"),
        ]
        .iter()
        .map(|text| cluster_package::parse_package("p.toml", text).expect("valid"))
        .collect();
        Relations::of(&defs)
    }

    #[test]
    fn the_checkers_see_what_they_are_about() {
        let relations = relations();
        use Activity::{Active, Stopping};
        // Anti-affinity: two instances, or different-node packages, on one node.
        let fine =
            [node("n1", &[("db:0", Active, true), ("app", Active, false)]), node("n2", &[("batch", Active, false)])];
        assert_eq!(anti_affinity::check(&relations, &fine, 0), Ok(()));
        let siblings = [node("n1", &[("db:0", Active, false), ("db:1", Stopping, false)])];
        assert!(anti_affinity::check(&relations, &siblings, 0).unwrap_err().contains("two instances of one package"));
        let shared = [node("n1", &[("app", Stopping, false), ("batch", Active, false)])];
        assert!(anti_affinity::check(&relations, &shared, 0).unwrap_err().contains("different-node"));
        // Primaries: two promoted instances of a package with one primary.
        assert_eq!(primaries::check(&relations, &fine, 0), Ok(()));
        let two = [node("n1", &[("db:0", Active, true)]), node("n2", &[("db:1", Stopping, true)])];
        assert!(primaries::check(&relations, &two, 0).unwrap_err().starts_with("2 primaries of db"));
        // Dependency order: an orderly stop of what a dependent still needs.
        assert!(dependency_order::on_orderly_stop(&relations, &fine, 0, "db:0").unwrap_err().contains("app"));
        let other_instance =
            [node("n1", &[("db:0", Active, false)]), node("n2", &[("db:1", Active, false), ("app", Active, false)])];
        assert_eq!(dependency_order::on_orderly_stop(&relations, &other_instance, 0, "db:0"), Ok(()));
        let state = cluster_model::ClusterState::default();
        assert_eq!(dependency_order::on_start(&relations, &fine, 0, "app", &state), Ok(()));
        let nothing = [node("n1", &[("db:0", Stopping, false)])];
        assert!(dependency_order::on_start(&relations, &nothing, 0, "app", &state)
            .unwrap_err()
            .contains("not running there"));
    }
}
