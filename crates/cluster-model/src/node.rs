//! Node identity: names chosen by the operator, numeric ids derived from them.

use serde::{Deserialize, Serialize};

/// What the cluster records about a member: its name and the address peers and clients dial.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub address: String,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.address)
    }
}

/// The Raft id of a node: FNV-1a 64 of its name, so every node derives the same id from the same
/// name without a registry. Collisions are refused when a node is added.
pub fn node_id(name: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Node names are 1 to 63 characters of `[a-zA-Z0-9._-]`, starting with a letter or digit, so they
/// are safe as file names, certificate names and log fields.
pub fn validate_node_name(name: &str) -> Result<(), String> {
    let valid_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let valid_start = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > 63 || !valid_chars || !valid_start {
        return Err(format!(
            "invalid node name `{name}`: expected 1 to 63 characters of letters, digits, `.`, `_` or `-`, starting with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct_for_usual_names() {
        assert_eq!(node_id("n1"), node_id("n1"));
        let ids: std::collections::BTreeSet<u64> = (1..=200).map(|i| node_id(&format!("n{i}"))).collect();
        assert_eq!(ids.len(), 200);
        // FNV-1a reference value for the empty input.
        assert_eq!(node_id(""), 0xcbf2_9ce4_8422_2325);
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_node_name("n1").is_ok());
        assert!(validate_node_name("db-01.example").is_ok());
        assert!(validate_node_name("").is_err());
        assert!(validate_node_name("-x").is_err());
        assert!(validate_node_name("a b").unwrap_err().contains("`a b`"));
        assert!(validate_node_name(&"a".repeat(64)).is_err());
    }
}
