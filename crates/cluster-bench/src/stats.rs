//! Percentiles of latency samples and the report: rows, markdown tables and JSON.

use std::fmt::Write as _;

use serde::Serialize;

/// The `q`-quantile (0 < q ≤ 1) of ascending `sorted` samples by the nearest-rank method: the
/// smallest sample with at least `q` of all samples at or below it. `None` when empty.
pub(crate) fn percentile(sorted: &[u32], q: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// What the load generator saw in one point's measured window.
#[derive(Debug, Clone, Default)]
pub(crate) struct Measured {
    /// Latency of every successful operation, µs, in any order.
    pub(crate) latencies_us: Vec<u32>,
    /// Length of the measured window.
    pub(crate) window_secs: f64,
    /// Failed operations.
    pub(crate) errors: u64,
    /// The first failure, for the report.
    pub(crate) first_error: Option<String>,
}

/// What the whole machine did during a point: noise from other tenants shows as steal.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Host {
    /// 1-minute load average when the point started (counts the benchmark's own processes).
    pub(crate) load_average: Option<f64>,
    /// Busy CPU time of all CPUs, percent of their capacity.
    pub(crate) busy_percent: Option<f64>,
    /// Idle time with a task waiting for the disk, percent of capacity.
    pub(crate) iowait_percent: Option<f64>,
    /// CPU time the hypervisor gave to other guests, percent of capacity.
    pub(crate) steal_percent: Option<f64>,
}

/// One measured point: a system, an operation, a number of concurrent clients.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) system: String,
    pub(crate) op: String,
    pub(crate) clients: usize,
    /// Successful operations per second in the measured window.
    pub(crate) ops_per_sec: f64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    /// Successful operations in the measured window.
    pub(crate) ops: u64,
    /// Failed operations in the measured window.
    pub(crate) errors: u64,
    /// The first error seen, to explain a non-zero `errors`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) first_error: Option<String>,
    /// The machine during the point's window (the benchmark itself included).
    pub(crate) host: Host,
}

impl Row {
    /// Summarises a measured point.
    pub(crate) fn new(system: &str, op: &str, clients: usize, measured: Measured, host: Host) -> Row {
        let Measured { mut latencies_us, window_secs, errors, first_error } = measured;
        latencies_us.sort_unstable();
        let ms = |us: u32| f64::from(us) / 1000.0;
        Row {
            system: system.to_owned(),
            op: op.to_owned(),
            clients,
            ops_per_sec: if window_secs > 0.0 { latencies_us.len() as f64 / window_secs } else { 0.0 },
            p50_ms: percentile(&latencies_us, 0.50).map(ms),
            p99_ms: percentile(&latencies_us, 0.99).map(ms),
            ops: latencies_us.len() as u64,
            errors,
            first_error,
            host,
        }
    }
}

/// Memory and CPU of one server process while its cluster sits idle.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct IdleRow {
    pub(crate) system: String,
    pub(crate) node: String,
    pub(crate) pid: u32,
    pub(crate) leader: bool,
    /// `VmRSS` at the end of the idle window, MiB.
    pub(crate) idle_rss_mib: f64,
    /// utime + stime over the idle window, percent of one core.
    pub(crate) idle_cpu_percent: f64,
    pub(crate) idle_window_secs: f64,
    /// `VmRSS` after every workload ran, MiB.
    pub(crate) rss_after_load_mib: Option<f64>,
}

/// Where and how the figures were taken.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    pub(crate) cpu_model: String,
    pub(crate) cpus: usize,
    pub(crate) kernel: String,
}

/// The settings of a run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Settings {
    pub(crate) duration_secs: f64,
    pub(crate) warmup_secs: f64,
    pub(crate) clients: Vec<usize>,
    pub(crate) value_bytes: usize,
    pub(crate) clusterd_transport: String,
}

/// The version a system reports.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Version {
    pub(crate) system: String,
    pub(crate) version: String,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) started_unix_secs: u64,
    pub(crate) machine: Machine,
    pub(crate) settings: Settings,
    pub(crate) versions: Vec<Version>,
    pub(crate) rows: Vec<Row>,
    pub(crate) idle: Vec<IdleRow>,
    /// Why the run stopped before its last point (a leader changed), if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) aborted: Option<String>,
}

fn optional(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".to_owned(), |value| format!("{value:.decimals$}"))
}

impl Report {
    /// The report as markdown: the workload table, then the idle table.
    pub(crate) fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} × {} CPUs, Linux {}; {:.0} s per point after {:.1} s warm-up; {}-byte values; clusterd clients over {}",
            self.machine.cpu_model,
            self.machine.cpus,
            self.machine.kernel,
            self.settings.duration_secs,
            self.settings.warmup_secs,
            self.settings.value_bytes,
            self.settings.clusterd_transport,
        );
        for version in &self.versions {
            let _ = writeln!(out, "- {}: {}", version.system, version.version);
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| system | op | clients | ops/s | p50 ms | p99 ms | errors | host busy % | iowait % | steal % |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for row in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                row.system,
                row.op,
                row.clients,
                row.ops_per_sec,
                optional(row.p50_ms, 2),
                optional(row.p99_ms, 2),
                row.errors,
                optional(row.host.busy_percent, 0),
                optional(row.host.iowait_percent, 0),
                optional(row.host.steal_percent, 1),
            );
        }
        if let Some(reason) = &self.aborted {
            let _ = writeln!(out);
            let _ = writeln!(out, "**Run aborted** {reason}");
        }
        let errors: Vec<&Row> = self.rows.iter().filter(|row| row.first_error.is_some()).collect();
        if !errors.is_empty() {
            let _ = writeln!(out);
            for row in errors {
                let _ = writeln!(
                    out,
                    "- first error of {} {} ×{}: {}",
                    row.system,
                    row.op,
                    row.clients,
                    row.first_error.as_deref().unwrap_or_default()
                );
            }
        }
        if !self.idle.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(out, "| system | node | idle RSS MiB | idle CPU % of a core | RSS after load MiB |");
            let _ = writeln!(out, "|---|---|---:|---:|---:|");
            for idle in &self.idle {
                let _ = writeln!(
                    out,
                    "| {} | {}{} | {:.1} | {:.2} | {} |",
                    idle.system,
                    idle.node,
                    if idle.leader { " (leader)" } else { "" },
                    idle.idle_rss_mib,
                    idle.idle_cpu_percent,
                    optional(idle.rss_after_load_mib, 1),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(latencies_us: Vec<u32>, window_secs: f64, errors: u64, first_error: Option<&str>) -> Measured {
        Measured { latencies_us, window_secs, errors, first_error: first_error.map(str::to_owned) }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&samples, 0.50), Some(50));
        assert_eq!(percentile(&samples, 0.99), Some(99));
        assert_eq!(percentile(&samples, 1.0), Some(100));
        assert_eq!(percentile(&[7], 0.5), Some(7));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[1, 2], 0.5), Some(1));
        assert_eq!(percentile(&[1, 2], 0.99), Some(2));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn p99_of_a_small_sample_is_its_tail_not_an_average() {
        // 200 samples: exactly 99 % at or below 1 ms, so p99 is 1 ms ...
        let mut samples = vec![1000; 198];
        samples.extend([90_000, 90_000]);
        assert_eq!(percentile(&samples, 0.99), Some(1000));
        // ... and with one more slow sample, less than 99 % are, so p99 is the slow one.
        samples[0] = 90_000;
        samples.sort_unstable();
        assert_eq!(percentile(&samples, 0.99), Some(90_000));
    }

    #[test]
    fn row_turns_microseconds_into_rate_and_milliseconds() {
        let row =
            Row::new("etcd", "set", 16, measured(vec![3000, 1000, 2000, 4000], 2.0, 1, Some("boom")), Host::default());
        assert_eq!(row.ops, 4);
        assert_eq!(row.ops_per_sec, 2.0);
        assert_eq!(row.p50_ms, Some(2.0));
        assert_eq!(row.p99_ms, Some(4.0));
        let empty = Row::new("etcd", "get", 1, measured(Vec::new(), 1.0, 3, None), Host::default());
        assert_eq!(empty.ops_per_sec, 0.0);
        assert_eq!(empty.p50_ms, None);
    }

    #[test]
    fn markdown_has_one_line_per_row_and_shows_missing_values() {
        let report = Report {
            started_unix_secs: 0,
            machine: Machine { cpu_model: "cpu".into(), cpus: 2, kernel: "6.1".into() },
            settings: Settings {
                duration_secs: 1.0,
                warmup_secs: 0.2,
                clients: vec![1],
                value_bytes: 64,
                clusterd_transport: "tls".into(),
            },
            versions: vec![],
            rows: vec![
                Row::new(
                    "clusterd",
                    "set",
                    1,
                    measured(vec![500], 1.0, 0, None),
                    Host {
                        load_average: Some(1.5),
                        busy_percent: Some(71.4),
                        iowait_percent: Some(9.6),
                        steal_percent: Some(2.25),
                    },
                ),
                Row::new("etcd", "set", 1, measured(vec![], 1.0, 2, Some("grpc-status 14")), Host::default()),
            ],
            idle: vec![],
            aborted: Some("after etcd set ×1: leader moved".into()),
        };
        let text = report.markdown();
        assert!(text.contains("| clusterd | set | 1 | 1 | 0.50 | 0.50 | 0 | 71 | 10 | 2.2 |"), "{text}");
        assert!(text.contains("| etcd | set | 1 | 0 | - | - | 2 | - | - | - |"), "{text}");
        assert!(text.contains("first error of etcd set ×1: grpc-status 14"), "{text}");
        assert!(text.contains("**Run aborted** after etcd set ×1: leader moved"), "{text}");
    }
}
