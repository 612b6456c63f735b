//! The replicated state machine: what every node holds after applying the committed log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Command, CommandOutcome, Settings};

/// Everything the committed log describes, apart from Raft membership (which the Raft layer keeps).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub settings: Settings,
    pub kv: BTreeMap<String, String>,
}

impl ClusterState {
    /// Applies one committed command. Deterministic and total: invalid commands are rejected with a
    /// reason and leave the state unchanged.
    pub fn apply(&mut self, command: &Command) -> CommandOutcome {
        match command {
            Command::KvSet { key, value } => {
                self.kv.insert(key.clone(), value.clone());
                CommandOutcome::Applied
            }
            Command::KvCas { key, expected, new } => {
                let current = self.kv.get(key);
                if current != expected.as_ref() {
                    return CommandOutcome::CasMismatch {
                        current: current.cloned(),
                    };
                }
                self.kv.insert(key.clone(), new.clone());
                CommandOutcome::Applied
            }
            Command::KvDel { key } => CommandOutcome::Deleted {
                existed: self.kv.remove(key).is_some(),
            },
            Command::SetSetting { name, value } => match self.settings.set(name, value) {
                Ok(()) => CommandOutcome::Applied,
                Err(err) => CommandOutcome::Rejected {
                    reason: err.to_string(),
                },
            },
        }
    }

    /// Value of one key.
    pub fn get(&self, key: &str) -> Option<&String> {
        self.kv.get(key)
    }

    /// Keys starting with `prefix`, in key order.
    pub fn list(&self, prefix: &str) -> Vec<(String, String)> {
        self.kv
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str) -> Command {
        Command::KvSet {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn cas_compares_against_current_value_and_absence() {
        let mut state = ClusterState::default();
        let create = Command::KvCas {
            key: "a".into(),
            expected: None,
            new: "1".into(),
        };
        assert_eq!(state.apply(&create), CommandOutcome::Applied);
        assert_eq!(
            state.apply(&create),
            CommandOutcome::CasMismatch {
                current: Some("1".into())
            }
        );
        let swap = Command::KvCas {
            key: "a".into(),
            expected: Some("1".into()),
            new: "2".into(),
        };
        assert_eq!(state.apply(&swap), CommandOutcome::Applied);
        assert_eq!(
            state.apply(&swap),
            CommandOutcome::CasMismatch {
                current: Some("2".into())
            }
        );
        assert_eq!(state.get("a").map(String::as_str), Some("2"));
    }

    #[test]
    fn delete_reports_whether_the_key_existed() {
        let mut state = ClusterState::default();
        state.apply(&set("a", "1"));
        assert_eq!(
            state.apply(&Command::KvDel { key: "a".into() }),
            CommandOutcome::Deleted { existed: true }
        );
        assert_eq!(
            state.apply(&Command::KvDel { key: "a".into() }),
            CommandOutcome::Deleted { existed: false }
        );
    }

    #[test]
    fn list_returns_only_the_prefix_in_order() {
        let mut state = ClusterState::default();
        for key in ["b/2", "a/1", "b/1", "c", "b"] {
            state.apply(&set(key, key));
        }
        let keys: Vec<String> = state.list("b/").into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["b/1", "b/2"]);
        assert_eq!(state.list("").len(), 5);
    }

    #[test]
    fn rejected_setting_leaves_state_unchanged() {
        let mut state = ClusterState::default();
        let before = state.clone();
        let outcome = state.apply(&Command::SetSetting {
            name: "snapshot_period".into(),
            value: "x".into(),
        });
        assert!(matches!(outcome, CommandOutcome::Rejected { .. }));
        assert_eq!(state, before);
    }
}
