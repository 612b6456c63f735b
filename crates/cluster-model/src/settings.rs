//! Cluster-wide settings, held in the replicated state so that no two nodes disagree about them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A fence device for one node: a fence-agents program and its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceConfig {
    /// Agent path or name (looked up in /usr/sbin), e.g. `fence_ipmilan`.
    pub agent: String,
    /// `name=value` parameters written on the agent's stdin (`ip`, `username`, `plug` …).
    pub params: BTreeMap<String, String>,
}

/// Settings every node reads from the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Build a snapshot (and compact the log) every this many applied entries.
    pub snapshot_period: u64,
    /// Interval of node lease renewals (heartbeats to the leader).
    pub heartbeat_ms: u64,
    /// How long a node may keep its packages without hearing from the quorum.
    pub lease_ms: u64,
    /// Bound on the rate difference of any two nodes' monotonic clocks, in parts per million.
    pub clock_drift_ppm: u64,
    /// Extra wait of the controller beyond a lease before it reassigns.
    pub lease_margin_ms: u64,
    /// Time an owner reserves before its lease ends to stop its packages; `None`: half the lease.
    pub stop_budget_ms: Option<u64>,
    /// Fence device per node.
    pub fencing: BTreeMap<String, FenceConfig>,
    /// Not a setting: after `lease`, `clock_drift` or `lease_margin` made [`Settings::lease_for_grantor`]
    /// shorter, the longest grantor wait (µs) of a lease that may still run, granted before the
    /// change. Every leader judges nodes it has not heard with at least this wait until
    /// `Command::LeasesSettled` clears it (docs/safety.md, "Changing timings at runtime").
    pub grantor_wait_ceiling_us: Option<u64>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            snapshot_period: 10_000,
            heartbeat_ms: 100,
            lease_ms: 1_000,
            clock_drift_ppm: 10_000,
            lease_margin_ms: 50,
            stop_budget_ms: None,
            fencing: BTreeMap::new(),
            grantor_wait_ceiling_us: None,
        }
    }
}

/// A setting that does not exist or a value of the wrong shape.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SettingError {
    #[error("unknown setting `{name}`: expected one of {}", Settings::NAMES.join(", "))]
    Unknown { name: String },
    #[error("invalid value `{value}` for setting `{name}`: expected {expected}")]
    Invalid { name: String, value: String, expected: String },
}

fn duration_ms(name: &str, value: &str, min_ms: u64) -> Result<u64, SettingError> {
    humantime::parse_duration(value).ok().map(|d| d.as_millis() as u64).filter(|ms| *ms >= min_ms).ok_or_else(|| {
        SettingError::Invalid {
            name: name.to_owned(),
            value: value.to_owned(),
            expected: format!("a duration like `100ms` or `1s`, at least {min_ms} ms"),
        }
    })
}

impl Settings {
    /// Names accepted by [`Settings::set`], in display order.
    pub const NAMES: &'static [&'static str] =
        &["snapshot_period", "heartbeat", "lease", "clock_drift", "lease_margin", "stop_budget"];

    /// Parses and stores one setting; checks it against the others; the state is unchanged on error.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), SettingError> {
        self.set_at(crate::ClusterVersion::CURRENT, name, value)
    }

    /// [`Settings::set`] as a cluster at `version` applies it: at version 1 (v0.1.0) without the
    /// watchdog rule and without a lease ceiling, as v0.1.0 did, so that both releases compute the
    /// same settings from the same log (a 0.2.0 leader refuses to shorten a lease meanwhile).
    pub fn set_at(&mut self, version: crate::ClusterVersion, name: &str, value: &str) -> Result<(), SettingError> {
        let since_0_2 = version >= crate::ClusterVersion::V0_2;
        let mut next = self.clone();
        let invalid = |expected: &str| SettingError::Invalid {
            name: name.to_owned(),
            value: value.to_owned(),
            expected: expected.to_owned(),
        };
        match name {
            "snapshot_period" => {
                next.snapshot_period = value
                    .parse::<u64>()
                    .ok()
                    .filter(|p| *p >= 10)
                    .ok_or_else(|| invalid("an integer number of entries, at least 10"))?;
            }
            "heartbeat" => next.heartbeat_ms = duration_ms(name, value, 10)?,
            "lease" => next.lease_ms = duration_ms(name, value, 100)?,
            "lease_margin" => next.lease_margin_ms = duration_ms(name, value, 0)?,
            "stop_budget" => {
                next.stop_budget_ms = if value == "auto" { None } else { Some(duration_ms(name, value, 10)?) }
            }
            "clock_drift" => {
                let percent = value
                    .strip_suffix('%')
                    .and_then(|p| p.trim().parse::<f64>().ok())
                    .filter(|p| (0.0..=10.0).contains(p))
                    .ok_or_else(|| invalid("a percentage between 0% and 10%, like `1%`"))?;
                next.clock_drift_ppm = (percent * 10_000.0).round() as u64;
            }
            _ => return Err(SettingError::Unknown { name: name.to_owned() }),
        }
        next.check(since_0_2).map_err(|why| invalid(&why))?;
        // Leases granted before this change were judged (and may still run) with the old wait:
        // keep the longest one until every such lease has certainly ended.
        let ceiling = self.longest_grantor_wait();
        if since_0_2 {
            next.grantor_wait_ceiling_us = (next.lease_for_grantor() < ceiling).then_some(ceiling.as_micros() as u64);
        }
        *self = next;
        Ok(())
    }

    /// `Command::LeasesSettled`: every lease granted with the wait `ceiling_us` has ended; false
    /// (nothing changed) if the ceiling is another one by now.
    pub fn settle_leases(&mut self, ceiling_us: u64) -> bool {
        let matches = self.grantor_wait_ceiling_us == Some(ceiling_us);
        if matches {
            self.grantor_wait_ceiling_us = None;
        }
        matches
    }

    /// Cross-setting rules: renewals must fit in a lease, the stop budget must leave room, and the
    /// watchdog (timeout = stop budget, petted at every heartbeat) must be petted twice per timeout.
    fn check(&self, watchdog_rule: bool) -> Result<(), String> {
        if self.heartbeat_ms * 3 > self.lease_ms {
            return Err(format!(
                "a value that keeps heartbeat ({} ms) at most a third of lease ({} ms)",
                self.heartbeat_ms, self.lease_ms
            ));
        }
        if self.stop_budget().as_millis() as u64 + 2 * self.heartbeat_ms > self.lease_ms {
            return Err(format!(
                "a value that keeps stop_budget ({} ms) plus two heartbeats within lease ({} ms)",
                self.stop_budget().as_millis(),
                self.lease_ms
            ));
        }
        if watchdog_rule && 2 * self.heartbeat_ms > self.stop_budget().as_millis() as u64 {
            return Err(format!(
                "a value that keeps two heartbeats ({} ms each) within stop_budget ({} ms): the watchdog's \
                 timeout is the stop budget and it is petted at every heartbeat",
                self.heartbeat_ms,
                self.stop_budget().as_millis()
            ));
        }
        Ok(())
    }

    /// Every setting as `(name, value)` text pairs.
    pub fn list(&self) -> Vec<(String, String)> {
        let mut entries = vec![
            ("snapshot_period".to_owned(), self.snapshot_period.to_string()),
            ("heartbeat".to_owned(), format!("{}ms", self.heartbeat_ms)),
            ("lease".to_owned(), format!("{}ms", self.lease_ms)),
            ("clock_drift".to_owned(), format!("{}%", self.clock_drift_ppm as f64 / 10_000.0)),
            ("lease_margin".to_owned(), format!("{}ms", self.lease_margin_ms)),
            (
                "stop_budget".to_owned(),
                match self.stop_budget_ms {
                    Some(ms) => format!("{ms}ms"),
                    None => format!("auto ({}ms)", self.stop_budget().as_millis()),
                },
            ),
        ];
        if let Some(ceiling) = self.grantor_wait_ceiling_us {
            entries.push((
                "lease_ceiling".to_owned(),
                format!("{}ms (leases granted before the lease was shortened may still run)", ceiling.div_ceil(1_000)),
            ));
        }
        for (node, fence) in &self.fencing {
            let params: Vec<String> = fence.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            entries.push((format!("fence.{node}"), format!("{} {}", fence.agent, params.join(" ")).trim().to_owned()));
        }
        entries
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    /// Time reserved to stop packages before a lease ends.
    pub fn stop_budget(&self) -> Duration {
        Duration::from_millis(self.stop_budget_ms.unwrap_or(self.lease_ms / 2))
    }

    /// How long a node's lease lasts from the time it sent the renewal: `lease × (1 − ρ)`.
    pub fn lease_for_holder(&self) -> Duration {
        Duration::from_micros(self.lease_ms * (1_000_000 - self.clock_drift_ppm.min(999_999)) / 1_000)
    }

    /// How long the leader waits from receiving a renewal before the lease has certainly ended:
    /// `lease × (1 + ρ) + margin`.
    pub fn lease_for_grantor(&self) -> Duration {
        Duration::from_micros(self.lease_ms * (1_000_000 + self.clock_drift_ppm) / 1_000)
            + Duration::from_millis(self.lease_margin_ms)
    }

    /// The wait that covers every lease that may still run: [`Settings::lease_for_grantor`], or
    /// longer while leases granted before a shortening may still run.
    pub fn longest_grantor_wait(&self) -> Duration {
        let ceiling = Duration::from_micros(self.grantor_wait_ceiling_us.unwrap_or(0));
        self.lease_for_grantor().max(ceiling)
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
        assert!(settings.set("leese", "1s").unwrap_err().to_string().starts_with("unknown setting `leese`"));
    }

    #[test]
    fn timings_are_checked_against_each_other() {
        let mut settings = Settings::default();
        settings.set("heartbeat", "50ms").unwrap();
        settings.set("lease", "300ms").unwrap();
        assert_eq!(settings.stop_budget(), Duration::from_millis(150));
        let err = settings.set("heartbeat", "200ms").unwrap_err().to_string();
        assert!(err.contains("at most a third of lease"), "{err}");
        assert_eq!(settings.heartbeat_ms, 50);
        let err = settings.set("stop_budget", "250ms").unwrap_err().to_string();
        assert!(err.contains("plus two heartbeats within lease"), "{err}");
        assert!(settings.set("lease", "soon").unwrap_err().to_string().contains("a duration like"));
        settings.set("clock_drift", "0.5%").unwrap();
        assert_eq!(settings.clock_drift_ppm, 5_000);
        assert!(settings.set("clock_drift", "50%").is_err());
    }

    #[test]
    fn the_watchdog_is_petted_at_least_twice_per_stop_budget() {
        let mut settings = Settings::default();
        let err = settings.set("stop_budget", "150ms").unwrap_err().to_string();
        assert!(err.contains("two heartbeats (100 ms each) within stop_budget (150 ms)"), "{err}");
        settings.set("stop_budget", "200ms").unwrap();
        let err = settings.set("heartbeat", "150ms").unwrap_err().to_string();
        assert!(err.contains("within stop_budget"), "{err}");
        assert_eq!(settings.heartbeat_ms, 100);
    }

    /// Regression (issue 11, finding 1): a shorter lease applied at once made a leader judge
    /// leases granted under the old, longer one with the new length.
    #[test]
    fn a_shorter_lease_keeps_the_old_wait_as_a_ceiling_until_settled() {
        let mut settings = Settings::default();
        settings.set("lease", "3s").unwrap();
        assert_eq!(settings.grantor_wait_ceiling_us, None, "a longer lease needs no ceiling");
        settings.set("lease", "1s").unwrap();
        assert_eq!(settings.lease_for_grantor(), Duration::from_millis(1_060));
        assert_eq!(settings.longest_grantor_wait(), Duration::from_millis(3_080));
        // A second shortening keeps the longest; a lower drift bound shortens the wait too.
        settings.set("lease", "600ms").unwrap();
        settings.set("clock_drift", "0%").unwrap();
        assert_eq!(settings.longest_grantor_wait(), Duration::from_millis(3_080));
        assert!(!settings.settle_leases(1), "another ceiling");
        assert!(settings.settle_leases(3_080_000));
        assert_eq!(settings.longest_grantor_wait(), settings.lease_for_grantor());
        // Lengthening past the ceiling clears it: the current wait covers the old leases.
        settings.set("lease", "400ms").unwrap();
        assert!(settings.grantor_wait_ceiling_us.is_some());
        settings.set("lease", "2s").unwrap();
        assert_eq!(settings.grantor_wait_ceiling_us, None);
    }

    #[test]
    fn holder_lease_is_shorter_than_grantor_wait() {
        let settings = Settings::default();
        assert_eq!(settings.lease_for_holder(), Duration::from_millis(990));
        assert_eq!(settings.lease_for_grantor(), Duration::from_millis(1_060));
    }
}
