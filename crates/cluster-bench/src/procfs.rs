//! Reading a process's memory and CPU use, and the machine's description, from `/proc`.

use anyhow::{bail, Context};

/// Resident set size of `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
    parse_vm_rss(&text).with_context(|| format!("no VmRSS line in {path}"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
}

/// CPU time used by `pid` so far (`utime + stime` of `/proc/PID/stat`), in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
    parse_stat_cpu_ticks(&text).with_context(|| format!("unexpected format of {path}"))
}

fn parse_stat_cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses, so cut at the last ')'.
    let after_comm = match stat.rfind(')') {
        Some(index) => &stat[index + 1..],
        None => bail!("no `)` after the command name"),
    };
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) are utime and stime; after the comm, field 3 is at index 0.
    let field = |number: usize| -> anyhow::Result<u64> {
        fields
            .get(number - 3)
            .with_context(|| format!("missing field {number}"))?
            .parse::<u64>()
            .with_context(|| format!("field {number} is not a number"))
    };
    Ok(field(14)? + field(15)?)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
pub(crate) fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions and only reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// The 1-minute load average (`/proc/loadavg`), if readable.
pub(crate) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// Machine-wide CPU time so far, from the `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CpuTimes {
    /// Everything but idle, iowait and steal.
    pub(crate) busy: u64,
    /// Idle while some task waited for the disk.
    pub(crate) iowait: u64,
    /// Time the hypervisor gave our virtual CPUs to someone else.
    pub(crate) steal: u64,
    pub(crate) total: u64,
}

impl CpuTimes {
    /// Reads `/proc/stat`.
    pub(crate) fn now() -> anyhow::Result<CpuTimes> {
        let text = std::fs::read_to_string("/proc/stat").context("failed to read /proc/stat")?;
        parse_cpu_times(&text).context("unexpected format of /proc/stat")
    }

    /// `(busy %, iowait %, steal %)` of all CPUs between `earlier` and `self`.
    pub(crate) fn percent_since(&self, earlier: &CpuTimes) -> (f64, f64, f64) {
        let total = self.total.saturating_sub(earlier.total).max(1) as f64;
        let percent = |now: u64, then: u64| 100.0 * now.saturating_sub(then) as f64 / total;
        (percent(self.busy, earlier.busy), percent(self.iowait, earlier.iowait), percent(self.steal, earlier.steal))
    }
}

fn parse_cpu_times(stat: &str) -> anyhow::Result<CpuTimes> {
    let line = stat.lines().find(|line| line.starts_with("cpu ")).context("no `cpu` line")?;
    let values = line
        .split_whitespace()
        .skip(1)
        .map(|value| value.parse::<u64>().context("not a number"))
        .collect::<anyhow::Result<Vec<u64>>>()?;
    if values.len() < 8 {
        bail!("{} fields in the `cpu` line, expected at least 8", values.len());
    }
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    let (idle, iowait, steal) = (values[3], values[4], values[7]);
    let total: u64 = values[..8].iter().sum();
    Ok(CpuTimes { busy: total - idle - iowait - steal, iowait, steal, total })
}

/// CPU model, online CPUs and kernel release.
pub(crate) fn machine() -> (String, usize, String) {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .and_then(|rest| rest.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let cpus = std::thread::available_parallelism().map(|count| count.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    (cpu_model, cpus, kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tclusterd\nVmPeak:\t  900000 kB\nVmRSS:\t   14212 kB\nRssAnon:\t 9000 kB\n";
        assert_eq!(parse_vm_rss(status), Some(14212));
        assert_eq!(parse_vm_rss("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn stat_cpu_ticks_survive_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (a b) c)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 37 12 0 0 20 0 9 0 100 \
                    1000000 3000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat_cpu_ticks(stat).unwrap(), 49);
        assert!(parse_stat_cpu_ticks("4242 (x) S 1").is_err());
    }

    #[test]
    fn machine_cpu_times_split_busy_iowait_and_steal() {
        let stat = "cpu  100 10 50 800 20 0 5 15 7 0\ncpu0 50 5 25 400 10 0 2 7 3 0\n";
        let earlier = parse_cpu_times(stat).unwrap();
        assert_eq!(earlier, CpuTimes { busy: 165, iowait: 20, steal: 15, total: 1000 });
        let later = CpuTimes { busy: 265, iowait: 30, steal: 35, total: 1200 };
        assert_eq!(later.percent_since(&earlier), (50.0, 5.0, 10.0));
        assert!(parse_cpu_times("cpu 1 2 3\n").is_err());
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(rss_kib(pid).unwrap() > 0);
        cpu_ticks(pid).unwrap();
        assert!(clock_ticks_per_second() > 0);
        assert!(CpuTimes::now().unwrap().total > 0);
    }
}
