//! Dependency order, checked at the two moments the cluster orders things (failures are not the
//! cluster's doing: a crashed node takes what depended on it along):
//!
//! - a node starts a dependent only when what it depends on runs where it must: for `same-node`,
//!   really active on that node (the executor checks it locally); for `any-node` and
//!   `different-node`, by the state the node applied (the state machine started it only then);
//! - a node begins an orderly stop of a package (its applied state says `stopping`, its lease is
//!   valid) only when nothing that still needs that instance is active anywhere (dependents stop
//!   first).

use cluster_model::relations::package_of;
use cluster_model::ClusterState;
use cluster_package::Location;

use crate::invariants::Relations;
use crate::node::{Activity, Node};

/// Node `n` begins to start `key` with the state `state` applied.
pub(crate) fn on_start(
    relations: &Relations,
    nodes: &[Node],
    n: usize,
    key: &str,
    state: &ClusterState,
) -> Result<(), String> {
    let Some(depends) = relations.depends.get(package_of(key)) else { return Ok(()) };
    let node = &nodes[n];
    for dependency in depends {
        let met = match dependency.location {
            Location::SameNode => node
                .records
                .iter()
                .any(|(other, record)| package_of(other) == dependency.package && record.activity == Activity::Active),
            Location::AnyNode | Location::DifferentNode => {
                cluster_model::relations::unmet_dependency(state, dependency, &node.name).is_none()
            }
        };
        if !met {
            return Err(format!(
                "{} starts {key} while {} is not running {}",
                node.name,
                dependency.package,
                match dependency.location {
                    Location::SameNode => "there",
                    Location::AnyNode => "anywhere (by its applied state)",
                    Location::DifferentNode => "on another node (by its applied state)",
                }
            ));
        }
    }
    Ok(())
}

/// Node `n` begins an orderly stop of `key`.
pub(crate) fn on_orderly_stop(relations: &Relations, nodes: &[Node], n: usize, key: &str) -> Result<(), String> {
    let name = package_of(key);
    let at = &nodes[n].name;
    // Where the other instances of the package run.
    let others: Vec<&str> = nodes
        .iter()
        .filter(|node| {
            node.records
                .iter()
                .any(|(other, r)| other != key && package_of(other) == name && r.activity == Activity::Active)
        })
        .map(|node| node.name.as_str())
        .collect();
    for (dependent, depends) in &relations.depends {
        let Some(dependency) = depends.iter().find(|dependency| dependency.package == name) else { continue };
        for node in nodes {
            for dependent_key in node.records.keys().chain(node.ghosts.keys()) {
                if package_of(dependent_key) != dependent {
                    continue;
                }
                let (needs_this, elsewhere) = match dependency.location {
                    Location::SameNode => (node.name == *at, others.contains(&node.name.as_str())),
                    Location::AnyNode => (true, !others.is_empty()),
                    Location::DifferentNode => (node.name != *at, others.iter().any(|other| *other != node.name)),
                };
                if needs_this && !elsewhere {
                    return Err(format!(
                        "{at} stops {key} while {dependent_key}, which depends on it ({}), is active on {}",
                        dependency.location.as_str(),
                        node.name
                    ));
                }
            }
        }
    }
    Ok(())
}
