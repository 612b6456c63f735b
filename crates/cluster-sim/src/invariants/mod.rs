//! The invariants the simulator checks, one per file: S1 after every event, start epochs at
//! every start, liveness once at the end of the heal phase.

pub(crate) mod liveness_after_heal;
pub(crate) mod s1_single_active;
pub(crate) mod start_epochs;
pub(crate) mod witness_hosts_nothing;

/// Formats a global time in µs as seconds.
pub(crate) fn secs(us: u64) -> String {
    format!("{:.6}s", us as f64 / 1e6)
}
