//! Cluster-wide settings, held in the replicated state so that no two nodes disagree about them.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Settings every node reads from the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Build a snapshot (and compact the log) every this many applied entries.
    pub snapshot_period: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            snapshot_period: 10_000,
        }
    }
}

/// A setting that does not exist or a value of the wrong shape.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SettingError {
    #[error("unknown setting `{name}`: expected one of {}", Settings::NAMES.join(", "))]
    Unknown { name: String },
    #[error("invalid value `{value}` for setting `{name}`: expected {expected}")]
    Invalid {
        name: String,
        value: String,
        expected: &'static str,
    },
}

impl Settings {
    /// Names accepted by [`Settings::set`], in display order.
    pub const NAMES: &'static [&'static str] = &["snapshot_period"];

    /// Parses and stores one setting; the state is unchanged on error.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), SettingError> {
        match name {
            "snapshot_period" => {
                self.snapshot_period =
                    value
                        .parse::<u64>()
                        .ok()
                        .filter(|p| *p >= 10)
                        .ok_or_else(|| SettingError::Invalid {
                            name: name.to_owned(),
                            value: value.to_owned(),
                            expected: "an integer number of entries, at least 10",
                        })?;
                Ok(())
            }
            _ => Err(SettingError::Unknown {
                name: name.to_owned(),
            }),
        }
    }

    /// Every setting as `(name, value)` text pairs.
    pub fn list(&self) -> Vec<(String, String)> {
        vec![(
            "snapshot_period".to_owned(),
            self.snapshot_period.to_string(),
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_leave_the_old_value() {
        let mut settings = Settings::default();
        assert_eq!(settings.set("snapshot_period", "50"), Ok(()));
        assert_eq!(settings.snapshot_period, 50);
        let err = settings.set("snapshot_period", "5").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value `5` for setting `snapshot_period`: expected an integer number of entries, at least 10"
        );
        assert_eq!(settings.snapshot_period, 50);
        assert_eq!(
            settings.set("lease", "1s").unwrap_err().to_string(),
            "unknown setting `lease`: expected one of snapshot_period"
        );
    }
}
