//! Checks of packages taken together: what `depends` refers to must exist, dependencies must not form
//! a cycle, and relations must not contradict each other. Used by `pkg validate` on the files given and
//! by `pkg apply` (in the replicated state machine) on the cluster's packages with the new definitions.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{Location, NodeName, PackageDef};

/// A problem of a set of packages that no single file shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    /// `depends` names a package that is not in the set.
    #[error("package `{package}` depends on `{missing}`, which is not defined")]
    UnknownPackage {
        /// The dependent.
        package: String,
        /// The missing package.
        missing: String,
    },
    /// Dependencies that form a cycle (the first package is repeated at the end).
    #[error("dependency cycle: {}", cycle.join(" -> "))]
    Cycle {
        /// The packages around the cycle.
        cycle: Vec<String>,
    },
    /// Relations that cannot all hold.
    #[error("contradictory relations between {}: {reason}", packages.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(" and "))]
    Contradiction {
        /// The packages involved.
        packages: Vec<String>,
        /// Why.
        reason: String,
    },
}

/// Every problem of `packages` taken together, in a stable order. Package names are unique in a set
/// (`validate_paths` and the replicated state see to it).
pub fn validate_set<'a>(packages: impl IntoIterator<Item = &'a PackageDef>) -> Vec<SetError> {
    let packages: BTreeMap<&str, &PackageDef> = packages.into_iter().map(|def| (def.name.as_str(), def)).collect();
    let mut errors = Vec::new();
    for (name, def) in &packages {
        for dependency in &def.depends {
            if !packages.contains_key(dependency.package.as_str()) {
                errors.push(SetError::UnknownPackage {
                    package: (*name).to_owned(),
                    missing: dependency.package.clone(),
                });
            }
        }
    }
    errors.extend(cycles(&packages).into_iter().map(|cycle| SetError::Cycle { cycle }));
    errors.extend(contradictions(&packages));
    errors
}

/// `packages` in an order where every package comes after the packages it depends on (those in the
/// set); ties by name. Packages on a cycle come last, in name order.
pub fn start_order<'a>(packages: &[&'a PackageDef]) -> Vec<&'a PackageDef> {
    let names: BTreeSet<&str> = packages.iter().map(|def| def.name.as_str()).collect();
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::new();
    let mut remaining: Vec<&'a PackageDef> = packages.to_vec();
    remaining.sort_by(|a, b| a.name.cmp(&b.name));
    while !remaining.is_empty() {
        let ready = remaining.iter().position(|def| {
            def.depends.iter().all(|d| !names.contains(d.package.as_str()) || placed.contains(d.package.as_str()))
        });
        let next = remaining.remove(ready.unwrap_or(0));
        placed.insert(next.name.as_str());
        order.push(next);
    }
    order
}

/// Each dependency cycle once, starting at its smallest name.
fn cycles(packages: &BTreeMap<&str, &PackageDef>) -> Vec<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit<'a>(
        name: &'a str,
        packages: &BTreeMap<&'a str, &'a PackageDef>,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
        found: &mut BTreeSet<Vec<String>>,
    ) {
        marks.insert(name, Mark::Open);
        path.push(name);
        for dependency in &packages[name].depends {
            let next = dependency.package.as_str();
            let Some((&next, _)) = packages.get_key_value(next) else { continue };
            match marks.get(next) {
                Some(Mark::Open) => {
                    let start = path.iter().position(|step| *step == next).expect("an open package is on the path");
                    let mut cycle: Vec<String> = path[start..].iter().map(|step| (*step).to_owned()).collect();
                    let smallest = (0..cycle.len()).min_by_key(|i| cycle[*i].clone()).unwrap_or(0);
                    cycle.rotate_left(smallest);
                    cycle.push(cycle[0].clone());
                    found.insert(cycle);
                }
                Some(Mark::Done) => {}
                None => visit(next, packages, marks, path, found),
            }
        }
        path.pop();
        marks.insert(name, Mark::Done);
    }
    let mut marks = BTreeMap::new();
    let mut found = BTreeSet::new();
    for name in packages.keys() {
        if !marks.contains_key(name) {
            visit(name, packages, &mut marks, &mut Vec::new(), &mut found);
        }
    }
    found.into_iter().collect()
}

/// Packages tied by `same-node` dependencies must share a node: no `different-node` relation may
/// join two of them, and their `nodes` lists must have a node in common. Two packages that must run
/// on different nodes may not both be limited to the same single node.
fn contradictions(packages: &BTreeMap<&str, &PackageDef>) -> Vec<SetError> {
    let mut errors = Vec::new();
    // Groups of packages joined by same-node dependencies (union by smallest name).
    let mut group: BTreeMap<&str, &str> = packages.keys().map(|name| (*name, *name)).collect();
    fn root<'a>(group: &BTreeMap<&'a str, &'a str>, mut name: &'a str) -> &'a str {
        while group[name] != name {
            name = group[name];
        }
        name
    }
    for (name, def) in packages {
        for dependency in def.depends.iter().filter(|d| d.location == Location::SameNode) {
            let Some((&other, _)) = packages.get_key_value(dependency.package.as_str()) else { continue };
            let (a, b) = (root(&group, name), root(&group, other));
            let (low, high) = if a <= b { (a, b) } else { (b, a) };
            group.insert(high, low);
        }
    }
    // Each group's members, in name order: computed once (asking every package for its group per
    // group made this quadratic, and the state machine runs it on every `pkg apply`: 1,000
    // packages on 50 nodes overloaded the lab).
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for name in packages.keys() {
        groups.entry(root(&group, name)).or_default().push(name);
    }
    let members = |name: &str| -> Vec<&str> { groups[root(&group, name)].clone() };
    for (name, def) in packages {
        for dependency in def.depends.iter().filter(|d| d.location == Location::DifferentNode) {
            let Some((&other, other_def)) = packages.get_key_value(dependency.package.as_str()) else { continue };
            if root(&group, name) == root(&group, other) {
                errors.push(SetError::Contradiction {
                    packages: vec![(*name).to_owned(), other.to_owned()],
                    reason: format!(
                        "`{name}` must not share a node with `{other}` (different-node), but same-node dependencies tie \
                         them to one node ({})",
                        members(name).join(", ")
                    ),
                });
                continue;
            }
            if let ([only], [other_only]) = (def.nodes.as_slice(), other_def.nodes.as_slice()) {
                if only == other_only {
                    errors.push(SetError::Contradiction {
                        packages: vec![(*name).to_owned(), other.to_owned()],
                        reason: format!("both may run only on node {only}, but must not share a node (different-node)"),
                    });
                }
            }
        }
    }
    for together in groups.values() {
        if together.len() < 2 {
            continue;
        }
        // Nodes every member allows (an empty list allows every node).
        let mut allowed: Option<BTreeSet<&str>> = None;
        for member in together {
            let def = packages[member];
            if def.nodes.is_empty() {
                continue;
            }
            let nodes: BTreeSet<&str> = def.nodes.iter().map(NodeName::as_str).collect();
            allowed = Some(match allowed {
                None => nodes,
                Some(before) => before.intersection(&nodes).copied().collect(),
            });
        }
        if allowed.is_some_and(|nodes| nodes.is_empty()) {
            let lists: Vec<String> = together
                .iter()
                .filter(|member| !packages[*member].nodes.is_empty())
                .map(|member| format!("`{member}` on {}", packages[member].nodes.join(", ")))
                .collect();
            errors.push(SetError::Contradiction {
                packages: together.iter().map(|member| (*member).to_owned()).collect(),
                reason: format!(
                    "same-node dependencies tie them to one node, but no node is allowed to all of them ({})",
                    lists.join("; ")
                ),
            });
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(name: &str, extra: &str) -> PackageDef {
        let text = format!(
            "name = \"{name}\"\n{extra}\n[[resource]]\nname = \"vip\"\ntype = \"ip\"\naddress = \"192.0.2.1/24\"\ninterface = \"eth0\"\n"
        );
        crate::parse_package("p.toml", &text).expect("valid package")
    }

    fn errors(packages: &[PackageDef]) -> Vec<String> {
        validate_set(packages).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_consistent_set_has_no_error_and_starts_dependencies_first() {
        let set = [
            package("app", "depends = [{ package = \"db\", where = \"same-node\" }, { package = \"cache\", where = \"any-node\" }]"),
            package("cache", ""),
            package("db", "depends = [{ package = \"cache\", where = \"different-node\" }]"),
        ];
        assert_eq!(errors(&set), Vec::<String>::new());
        let refs: Vec<&PackageDef> = set.iter().collect();
        let order: Vec<&str> = start_order(&refs).iter().map(|def| def.name.as_str()).collect();
        assert_eq!(order, ["cache", "db", "app"]);
    }

    #[test]
    fn unknown_packages_cycles_and_contradictions_name_the_packages() {
        /// Packages (name, extra lines) and the errors of the set.
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let table: &[Case<'_>] = &[
            (
                &[("app", "depends = [{ package = \"db\", where = \"same-node\" }]")],
                &["package `app` depends on `db`, which is not defined"],
            ),
            (
                &[
                    ("a", "depends = [{ package = \"b\", where = \"any-node\" }]"),
                    ("b", "depends = [{ package = \"c\", where = \"same-node\" }]"),
                    ("c", "depends = [{ package = \"a\", where = \"different-node\" }]"),
                ],
                &["dependency cycle: a -> b -> c -> a"],
            ),
            (
                &[
                    ("app", "depends = [{ package = \"db\", where = \"same-node\" }, { package = \"log\", where = \"same-node\" }]"),
                    ("db", "depends = [{ package = \"log\", where = \"different-node\" }]"),
                    ("log", ""),
                ],
                &["contradictory relations between `db` and `log`: `db` must not share a node with `log` (different-node), but same-node dependencies tie them to one node (app, db, log)"],
            ),
            (
                &[
                    ("app", "nodes = [\"n1\", \"n2\"]\ndepends = [{ package = \"db\", where = \"same-node\" }]"),
                    ("db", "nodes = [\"n3\"]"),
                ],
                &["contradictory relations between `app` and `db`: same-node dependencies tie them to one node, but no node is allowed to all of them (`app` on n1, n2; `db` on n3)"],
            ),
            (
                &[
                    ("a", "nodes = [\"n1\"]\ndepends = [{ package = \"b\", where = \"different-node\" }]"),
                    ("b", "nodes = [\"n1\"]"),
                ],
                &["contradictory relations between `a` and `b`: both may run only on node n1, but must not share a node (different-node)"],
            ),
        ];
        let mut mismatches = Vec::new();
        for (set, expected) in table {
            let packages: Vec<PackageDef> = set.iter().map(|(name, extra)| package(name, extra)).collect();
            let actual = errors(&packages);
            if actual != *expected {
                mismatches.push(format!("expected {expected:#?}\nactual {actual:#?}"));
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }

    #[test]
    fn two_cycles_are_both_reported_once() {
        let set = [
            package("a", "depends = [{ package = \"b\", where = \"any-node\" }]"),
            package(
                "b",
                "depends = [{ package = \"a\", where = \"any-node\" }, { package = \"c\", where = \"any-node\" }]",
            ),
            package("c", "depends = [{ package = \"b\", where = \"any-node\" }]"),
        ];
        assert_eq!(errors(&set), ["dependency cycle: a -> b -> a", "dependency cycle: b -> c -> b"]);
    }
}
