//! The observer's history (JSON lines of state transitions on one monotonic clock) and what is computed from
//! it: activity intervals, the split-brain checker (S1) and failover phase timings. Pure functions.
//!
//! A transition record says "at sample `t_ns` node N was seen active (or inactive) for resource R, and at its
//! previous sample `prev_t_ns` it was seen in the other state". So a node is *certainly* active from the first
//! active sample to the last active sample, and *possibly* active from just after the last inactive sample to
//! just before the first inactive one. Split brain is reported on certain overlaps only; overlaps that the
//! sampling cannot decide are reported separately with their width.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a record is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A virtual IP present on an interface of the node.
    Vip,
    /// A filesystem mounted in the node's mount namespace.
    Mount,
    /// A process with this name running in the node.
    Process,
    /// The client namespace reaches the address (`node` is `client`).
    Client,
    /// A fault injected by the lab (`resource` is the fault's name).
    Fault,
    /// A file of the node holding a text (`resource` is `PATH=TEXT`): a promoted instance's state.
    File,
}

/// One line of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Time of the sample, `CLOCK_MONOTONIC` nanoseconds.
    pub t_ns: u64,
    /// Time of the previous sample of the same node (which saw the other state); equals `t_ns` if none.
    pub prev_t_ns: u64,
    /// Node name (`client` for reachability).
    pub node: String,
    /// What is observed.
    pub kind: Kind,
    /// The resource: an address, a mount point, a process name, `ADDR:PORT`, or a fault name.
    pub resource: String,
    /// Seen active (for faults: always true).
    pub active: bool,
}

/// A time during which one node had a resource active.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Interval {
    /// The node.
    pub node: String,
    /// First sample that saw it active.
    pub start_ns: u64,
    /// Last sample that saw it active (`end_ns` of the history when it stayed active).
    pub end_ns: u64,
    /// Last sample that saw it inactive before (the earliest it may have started).
    pub possible_start_ns: u64,
    /// First sample that saw it inactive after (the latest it may have stopped); history end if none.
    pub possible_end_ns: u64,
    /// Still active at the end of the history.
    pub open: bool,
}

/// Intervals per `(kind, resource)`, from the records (any order). `history_end_ns` closes open intervals.
pub fn intervals(records: &[Record], history_end_ns: u64) -> BTreeMap<(Kind, String), Vec<Interval>> {
    let mut sorted: Vec<&Record> = records.iter().filter(|record| record.kind != Kind::Fault).collect();
    sorted.sort_by_key(|record| record.t_ns);
    let mut open: BTreeMap<(Kind, String, String), (u64, u64)> = BTreeMap::new();
    let mut result: BTreeMap<(Kind, String), Vec<Interval>> = BTreeMap::new();
    for record in sorted {
        let key = (record.kind, record.resource.clone(), record.node.clone());
        if record.active {
            open.entry(key).or_insert((record.t_ns, record.prev_t_ns));
        } else if let Some((start_ns, possible_start_ns)) = open.remove(&key) {
            result.entry((record.kind, record.resource.clone())).or_default().push(Interval {
                node: record.node.clone(),
                start_ns,
                end_ns: record.prev_t_ns.max(start_ns),
                possible_start_ns,
                possible_end_ns: record.t_ns,
                open: false,
            });
        }
    }
    for ((kind, resource, node), (start_ns, possible_start_ns)) in open {
        result.entry((kind, resource)).or_default().push(Interval {
            node,
            start_ns,
            end_ns: history_end_ns.max(start_ns),
            possible_start_ns,
            possible_end_ns: history_end_ns.max(start_ns),
            open: true,
        });
    }
    for list in result.values_mut() {
        list.sort_by_key(|interval| (interval.start_ns, interval.node.clone()));
    }
    result
}

/// Two nodes with the same resource active at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Overlap {
    /// What kind of resource.
    pub kind: Kind,
    /// The resource.
    pub resource: String,
    /// The two nodes.
    pub nodes: (String, String),
    /// Start of the overlap (ns).
    pub from_ns: u64,
    /// End of the overlap (ns).
    pub to_ns: u64,
    /// True when both were certainly active at once; false when only the sampling cannot exclude it.
    pub certain: bool,
}

impl Overlap {
    /// Width in milliseconds.
    pub fn millis(&self) -> f64 {
        (self.to_ns - self.from_ns) as f64 / 1e6
    }
}

/// The outcome of the split-brain check.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SplitBrainReport {
    /// Certain overlaps: each one fails the run.
    pub violations: Vec<Overlap>,
    /// Overlaps the sampling resolution cannot exclude (informational).
    pub uncertain: Vec<Overlap>,
}

impl SplitBrainReport {
    /// True when no resource was certainly active on two nodes at once.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Invariant S1 over the history: any instant where a VIP, mount or process is active on two nodes.
pub fn check_split_brain(records: &[Record], history_end_ns: u64) -> SplitBrainReport {
    let mut report = SplitBrainReport::default();
    for ((kind, resource), list) in intervals(records, history_end_ns) {
        if matches!(kind, Kind::Client | Kind::Fault) {
            continue;
        }
        for (index, first) in list.iter().enumerate() {
            for second in &list[index + 1..] {
                if first.node == second.node {
                    continue;
                }
                let nodes = (first.node.clone(), second.node.clone());
                let from = first.start_ns.max(second.start_ns);
                let to = first.end_ns.min(second.end_ns);
                if from <= to {
                    report.violations.push(Overlap {
                        kind,
                        resource: resource.clone(),
                        nodes,
                        from_ns: from,
                        to_ns: to,
                        certain: true,
                    });
                    continue;
                }
                let from = first.possible_start_ns.max(second.possible_start_ns);
                let to = first.possible_end_ns.min(second.possible_end_ns);
                if from < to {
                    report.uncertain.push(Overlap {
                        kind,
                        resource: resource.clone(),
                        nodes,
                        from_ns: from,
                        to_ns: to,
                        certain: false,
                    });
                }
            }
        }
    }
    report
}

/// Phases of one failover, in milliseconds after the fault.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailoverTiming {
    /// Who had the resource when the fault happened.
    pub old_owner: Option<String>,
    /// Fault → the old owner no longer has it (`None`: it kept it).
    pub old_stopped_ms: Option<f64>,
    /// Who took it over.
    pub new_owner: Option<String>,
    /// Fault → the new owner has it.
    pub new_started_ms: Option<f64>,
    /// Fault → the client reaches it again, from the new owner.
    pub client_reached_ms: Option<f64>,
}

/// Failover phases of `(kind, resource)` after the fault at `fault_ns`; `probe` names the client probe
/// resource (e.g. `192.0.2.100:80`).
pub fn failover_timing(
    records: &[Record],
    history_end_ns: u64,
    kind: Kind,
    resource: &str,
    probe: Option<&str>,
    fault_ns: u64,
) -> FailoverTiming {
    let all = intervals(records, history_end_ns);
    let empty = Vec::new();
    let list = all.get(&(kind, resource.to_string())).unwrap_or(&empty);
    let millis = |t: u64| t.saturating_sub(fault_ns) as f64 / 1e6;
    let old = list.iter().find(|interval| interval.start_ns <= fault_ns && interval.possible_end_ns >= fault_ns);
    let old_owner = old.map(|interval| interval.node.clone());
    let old_stopped_ms = old.filter(|interval| !interval.open).map(|interval| millis(interval.possible_end_ns));
    let new = list.iter().find(|interval| interval.start_ns > fault_ns && Some(&interval.node) != old_owner.as_ref());
    let new_owner = new.map(|interval| interval.node.clone());
    let new_started_ms = new.map(|interval| millis(interval.start_ns));
    let client_reached_ms = match (new, probe) {
        (Some(new), Some(probe)) => all
            .get(&(Kind::Client, probe.to_string()))
            .and_then(|client| client.iter().find(|interval| interval.end_ns >= new.start_ns))
            .map(|interval| millis(interval.start_ns.max(new.start_ns))),
        _ => None,
    };
    FailoverTiming { old_owner, old_stopped_ms, new_owner, new_started_ms, client_reached_ms }
}

/// Nearest-rank percentile (`p` in 0..=100) of the values; `None` when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Parses a JSON-lines history, skipping lines that are not records.
pub fn parse_jsonl(text: &str) -> Vec<Record> {
    text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn record(t: u64, prev: u64, node: &str, kind: Kind, active: bool) -> Record {
        Record { t_ns: t * MS, prev_t_ns: prev * MS, node: node.into(), kind, resource: "192.0.2.100".into(), active }
    }

    fn clean_failover() -> Vec<Record> {
        vec![
            record(0, 0, "n1", Kind::Vip, true),
            Record { kind: Kind::Fault, resource: "kill".into(), ..record(1000, 1000, "n1", Kind::Fault, true) },
            record(1005, 1000, "n1", Kind::Vip, false),
            record(2000, 1995, "n2", Kind::Vip, true),
            Record { resource: "192.0.2.100:80".into(), ..record(1010, 1000, "client", Kind::Client, false) },
            Record { resource: "192.0.2.100:80".into(), ..record(2050, 2040, "client", Kind::Client, true) },
        ]
    }

    #[test]
    fn split_brain_passes_a_clean_failover() {
        let report = check_split_brain(&clean_failover(), 3000 * MS);
        assert!(report.passed(), "{report:?}");
        assert!(report.uncertain.is_empty());
    }

    #[test]
    fn split_brain_fails_when_two_nodes_hold_the_vip() {
        let records = vec![
            record(0, 0, "n1", Kind::Vip, true),
            record(500, 495, "n2", Kind::Vip, true),
            record(800, 795, "n1", Kind::Vip, false),
        ];
        let report = check_split_brain(&records, 1000 * MS);
        assert_eq!(report.violations.len(), 1);
        let overlap = &report.violations[0];
        assert_eq!(overlap.nodes, ("n1".to_string(), "n2".to_string()));
        assert_eq!((overlap.from_ns, overlap.to_ns), (500 * MS, 795 * MS));
        assert!(overlap.certain);
    }

    #[test]
    fn overlap_within_one_sample_is_uncertain_not_a_violation() {
        // n1 last seen active at 100, inactive at 105; n2 first seen active at 103 (previous sample 98).
        let records = vec![
            record(0, 0, "n1", Kind::Vip, true),
            record(105, 100, "n1", Kind::Vip, false),
            record(103, 98, "n2", Kind::Vip, true),
        ];
        let report = check_split_brain(&records, 200 * MS);
        assert!(report.passed());
        assert_eq!(report.uncertain.len(), 1);
        assert!((report.uncertain[0].millis() - 7.0).abs() < 1e-9);
    }

    #[test]
    fn failover_timing_has_every_phase() {
        let timing =
            failover_timing(&clean_failover(), 3000 * MS, Kind::Vip, "192.0.2.100", Some("192.0.2.100:80"), 1000 * MS);
        assert_eq!(timing.old_owner.as_deref(), Some("n1"));
        assert_eq!(timing.old_stopped_ms, Some(5.0));
        assert_eq!(timing.new_owner.as_deref(), Some("n2"));
        assert_eq!(timing.new_started_ms, Some(1000.0));
        assert_eq!(timing.client_reached_ms, Some(1050.0));
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let values: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(10.0));
        assert_eq!(percentile(&values, 99.0), Some(20.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn history_round_trips_through_json_lines() {
        let records = clean_failover();
        let text: String = records.iter().map(|record| serde_json::to_string(record).unwrap() + "\n").collect();
        assert_eq!(parse_jsonl(&text), records);
    }
}
