//! Network partitions as data: `n1,n2 / n3` (both directions) or `n1 -> n2,n3` (one way), turned into the
//! pairs of switch ports whose frames the lab's bridge drops.

use std::fmt;
use std::str::FromStr;

/// A split of lab members (node names, or `client`) into sides that cannot talk to each other.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Partition {
    /// Two or more disjoint groups of members.
    pub sides: Vec<Vec<String>>,
    /// When true (written `A -> B`), only frames from the first side to the other sides are dropped.
    pub one_way: bool,
}

/// A partition that cannot be parsed.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// The text is not `A,B / C` or `A -> B`.
    #[error("invalid partition {text:?}: {reason}")]
    Invalid {
        /// The text given.
        text: String,
        /// What is wrong.
        reason: &'static str,
    },
}

impl FromStr for Partition {
    type Err = PartitionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| PartitionError::Invalid { text: text.to_string(), reason };
        let (parts, one_way): (Vec<&str>, bool) =
            if text.contains("->") { (text.split("->").collect(), true) } else { (text.split('/').collect(), false) };
        if one_way && parts.len() != 2 {
            return Err(invalid("a one-way partition has exactly two sides"));
        }
        let sides: Vec<Vec<String>> = parts
            .iter()
            .map(|side| {
                side.split(',').map(str::trim).filter(|member| !member.is_empty()).map(String::from).collect::<Vec<_>>()
            })
            .collect();
        if sides.len() < 2 || sides.iter().any(Vec::is_empty) {
            return Err(invalid("expected at least two non-empty sides"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for member in sides.iter().flatten() {
            if !seen.insert(member) {
                return Err(invalid("a member appears on two sides"));
            }
        }
        Ok(Partition { sides, one_way })
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let separator = if self.one_way { " -> " } else { " / " };
        let sides: Vec<String> = self.sides.iter().map(|side| side.join(",")).collect();
        formatter.write_str(&sides.join(separator))
    }
}

impl Partition {
    /// Every member named by the partition.
    pub fn members(&self) -> impl Iterator<Item = &String> {
        self.sides.iter().flatten()
    }

    /// The ordered pairs `(from, to)` whose traffic is dropped.
    pub fn dropped_pairs(&self) -> Vec<(String, String)> {
        let mut pairs = Vec::new();
        for (from_index, from_side) in self.sides.iter().enumerate() {
            for (to_index, to_side) in self.sides.iter().enumerate() {
                let dropped = if self.one_way { from_index == 0 && to_index != 0 } else { from_index != to_index };
                if !dropped {
                    continue;
                }
                for from in from_side {
                    for to in to_side {
                        pairs.push((from.clone(), to.clone()));
                    }
                }
            }
        }
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_directions_drop_every_cross_pair() {
        let partition: Partition = "n1,n2 / n3".parse().unwrap();
        assert!(!partition.one_way);
        assert_eq!(
            partition.dropped_pairs(),
            vec![
                ("n1".into(), "n3".into()),
                ("n2".into(), "n3".into()),
                ("n3".into(), "n1".into()),
                ("n3".into(), "n2".into()),
            ]
        );
        assert_eq!(partition.to_string(), "n1,n2 / n3");
    }

    #[test]
    fn one_way_drops_only_from_the_first_side() {
        let partition: Partition = "n1 -> n2,client".parse().unwrap();
        assert_eq!(partition.dropped_pairs(), vec![("n1".into(), "n2".into()), ("n1".into(), "client".into())]);
    }

    #[test]
    fn three_sides_isolate_every_node() {
        let partition: Partition = "n1/n2/n3".parse().unwrap();
        assert_eq!(partition.dropped_pairs().len(), 6);
    }

    #[test]
    fn rejects_bad_partitions() {
        assert!("n1".parse::<Partition>().is_err());
        assert!("n1 / ".parse::<Partition>().is_err());
        assert!("n1,n2 / n2".parse::<Partition>().is_err());
        assert!("n1 -> n2 -> n3".parse::<Partition>().is_err());
    }
}
