//! Liveness: at the end of the heal phase (no faults for `heal_phase`), a leader leads, every
//! package desired running runs on exactly one node, which its state names as owner with phase
//! `Running`, and every package desired stopped is active nowhere.

use cluster_model::{Desired, Phase};

use crate::sim::Sim;

pub(crate) fn check(sim: &Sim) -> Result<(), String> {
    let Some(leader) = sim.leader else {
        return Err("no leader at the end of the heal phase".into());
    };
    let state = &sim.nodes[leader].state;
    for (name, package) in &state.packages {
        let active: Vec<&str> = sim
            .nodes
            .iter()
            .filter(|node| node.records.contains_key(name) || node.ghosts.contains_key(name))
            .map(|node| node.name.as_str())
            .collect();
        let settled = match package.desired {
            Desired::Running => {
                active.len() == 1 && package.owner.as_deref() == Some(active[0]) && package.phase == Phase::Running
            }
            Desired::Stopped => active.is_empty() && package.owner.is_none(),
        };
        if !settled {
            return Err(format!(
                "package {name} not settled after the heal phase: desired {:?}, owner {:?}, phase {:?}, epoch {}, active on {active:?}",
                package.desired, package.owner, package.phase, package.epoch
            ));
        }
    }
    Ok(())
}
