//! Architecture invariant: clusterctl never links the Raft, host or agent code, directly or
//! through one of our crates.

use std::collections::BTreeSet;
use std::path::Path;

/// Names of the `[dependencies]` of a workspace crate (dev-dependencies do not ship).
fn dependencies(crate_name: &str) -> Vec<String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(crate_name).join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap_or_else(|err| panic!("{}: {err}", manifest.display()));
    let table = text.split("\n[dependencies]\n").nth(1).expect("a [dependencies] table");
    let table = table.split("\n[").next().unwrap_or_default();
    table
        .lines()
        .filter_map(|line| line.split(['.', ' ', '=']).next())
        .filter(|name| !name.is_empty() && !name.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn clusterctl_does_not_link_raft_host_or_agents() {
    let mut seen = BTreeSet::new();
    let mut pending = vec!["clusterctl".to_owned()];
    while let Some(name) = pending.pop() {
        for dependency in dependencies(&name) {
            if dependency.starts_with("cluster-") && seen.insert(dependency.clone()) {
                pending.push(dependency.clone());
            }
            seen.insert(dependency);
        }
    }
    assert!(seen.contains("cluster-api") && seen.contains("cluster-tls"), "the walk found too little: {seen:?}");
    for forbidden in ["cluster-raft", "cluster-host", "cluster-agents", "openraft", "rtnetlink", "nix"] {
        assert!(!seen.contains(forbidden), "clusterctl links {forbidden}: {seen:?}");
    }
}
