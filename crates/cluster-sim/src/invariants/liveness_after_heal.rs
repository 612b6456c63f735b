//! Liveness: at the end of the heal phase (no faults for `heal_phase`), a leader leads, every
//! package instance that can run runs on exactly one node, which its state names as owner with
//! phase `Running`, and every other one is active nowhere. An instance can run when it is desired
//! running, the node it is bound to (if any) is a member, and every package it depends on has an
//! instance that can run. A promotable package has as many primaries (or instances being promoted)
//! as it wants (at most as many as run), each promoted on its owner, and no other instance is
//! promoted anywhere.

use std::collections::BTreeMap;

use cluster_model::relations::{bound_node, package_of};
use cluster_model::{ClusterState, Desired, Phase, Role};

use crate::sim::Sim;

/// Whether instance `key` can run in `state` when `members` are the member nodes.
fn can_run(state: &ClusterState, members: &[&str], key: &str, memo: &mut BTreeMap<String, bool>) -> bool {
    if let Some(known) = memo.get(key) {
        return *known;
    }
    let Some(package) = state.packages.get(key) else { return false };
    let bound_ok = bound_node(package, key).is_none_or(|node| members.contains(&node));
    let mut runs = package.desired == Desired::Running && !package.retired && bound_ok;
    if runs {
        for dependency in &package.def.depends {
            let keys = state.keys_named(&dependency.package);
            if !keys.iter().any(|other| can_run(state, members, other, memo)) {
                runs = false;
            }
        }
    }
    memo.insert(key.to_owned(), runs);
    runs
}

pub(crate) fn check(sim: &Sim) -> Result<(), String> {
    let Some(leader) = sim.leader else {
        return Err("no leader at the end of the heal phase".into());
    };
    let state = &sim.nodes[leader].state;
    let members: Vec<&str> =
        (0..sim.names.len()).filter(|n| !sim.removed.contains(n)).map(|n| sim.names[n].as_str()).collect();
    let mut memo = BTreeMap::new();
    for (name, package) in &state.packages {
        let active: Vec<&str> = sim
            .nodes
            .iter()
            .filter(|node| node.records.contains_key(name) || node.ghosts.contains_key(name))
            .map(|node| node.name.as_str())
            .collect();
        let settled = if can_run(state, &members, name, &mut memo) {
            active.len() == 1 && package.owner.as_deref() == Some(active[0]) && package.phase == Phase::Running
        } else {
            active.is_empty() && package.owner.is_none()
        };
        if !settled {
            return Err(format!(
                "package {name} not settled after the heal phase: desired {:?}, owner {:?}, phase {:?}, epoch {}, active on {active:?}",
                package.desired, package.owner, package.phase, package.epoch
            ));
        }
    }
    // Primaries: as many as wanted (at most the instances that run), promoted where the state says.
    let mut promotable: BTreeMap<&str, usize> = BTreeMap::new();
    for package in state.packages.values() {
        if let Some(promotable_def) = &package.def.promotable {
            promotable.insert(package.def.name.as_str(), promotable_def.primaries as usize);
        }
    }
    for (name, wanted) in promotable {
        let running = state.instances(name).filter(|(_, p)| p.phase == Phase::Running).count();
        // Promoting counts: its owner may have promoted it while its report waits behind a slow
        // monitor (the worker runs one thing at a time); the role is held either way.
        let primaries: Vec<&String> = state
            .instances(name)
            .filter(|(_, p)| matches!(p.role, Role::Primary | Role::Promoting))
            .map(|(key, _)| key)
            .collect();
        let promoted: Vec<String> = sim
            .nodes
            .iter()
            .flat_map(|node| {
                node.records
                    .iter()
                    .filter(|(key, record)| package_of(key) == name && record.promoted)
                    .map(move |(key, _)| format!("{key} on {}", node.name))
            })
            .collect();
        let owners_promoted = primaries.iter().all(|key| {
            let owner = state.packages[*key].owner.as_deref();
            sim.nodes
                .iter()
                .any(|node| Some(node.name.as_str()) == owner && node.records.get(*key).is_some_and(|r| r.promoted))
        });
        if primaries.len() != wanted.min(running) || promoted.len() != primaries.len() || !owners_promoted {
            return Err(format!(
                "package {name} not settled after the heal phase: {} of {wanted} primaries ({primaries:?}) with {running} \
                 instances running; promoted: {promoted:?}",
                primaries.len()
            ));
        }
    }
    Ok(())
}
