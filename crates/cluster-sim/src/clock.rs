//! Simulated monotonic clocks: one per node, with its own origin and a fixed rate within the drift bound.
//!
//! The simulator keeps one global (true) time in microseconds; a node only ever sees its own
//! reading `origin + global × rate`, as a `Duration` since an arbitrary origin, like
//! `CLOCK_MONOTONIC`.

use std::time::Duration;

/// One node's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Clock {
    origin_us: u64,
    /// Rate in parts per million of true time (1_000_000 = exact).
    rate_ppm: u64,
}

impl Clock {
    pub(crate) fn new(origin_us: u64, rate_ppm: u64) -> Clock {
        assert!(rate_ppm > 0, "a clock must advance");
        Clock { origin_us, rate_ppm }
    }

    /// The node's reading at global time `global_us`.
    pub(crate) fn local(&self, global_us: u64) -> Duration {
        let elapsed = u128::from(global_us) * u128::from(self.rate_ppm) / 1_000_000;
        Duration::from_micros(self.origin_us + elapsed as u64)
    }

    /// The first global time at which the node's reading is at least `local`.
    pub(crate) fn global_at(&self, local: Duration) -> u64 {
        let since = (local.as_micros() as u64).saturating_sub(self.origin_us);
        (u128::from(since) * 1_000_000).div_ceil(u128::from(self.rate_ppm)) as u64
    }

    pub(crate) fn rate_ppm(&self) -> u64 {
        self.rate_ppm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_at_is_the_first_instant_the_reading_is_reached() {
        for rate in [990_000, 1_000_000, 1_010_000, 1_000_001] {
            let clock = Clock::new(123_456_789, rate);
            for global in [0_u64, 1, 999, 1_000_000, 31_415_926] {
                let local = clock.local(global);
                let back = clock.global_at(local);
                assert!(back <= global, "rate {rate} global {global}");
                assert_eq!(clock.local(back), local, "rate {rate} global {global}");
            }
        }
    }
}
