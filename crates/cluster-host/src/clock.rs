//! The clocks: monotonic time and sleeping behind a trait, so timer logic can be driven by paused
//! tokio time; and the lease clock, which also counts the time the machine was suspended.

use std::time::Duration;

use tokio::time::Instant;

/// Monotonic time and sleeping.
#[async_trait::async_trait]
pub trait Clock: Send + Sync {
    /// Now, on the monotonic clock.
    fn now(&self) -> Instant;
    /// Sleep for `duration`.
    async fn sleep(&self, duration: Duration);
}

/// The tokio clock (pausable in tests with `#[tokio::test(start_paused = true)]`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

#[async_trait::async_trait]
impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// The lease clock: time since boot, counting the time the machine was suspended
/// (`CLOCK_BOOTTIME`), as a duration since an arbitrary origin.
///
/// `CLOCK_MONOTONIC` (`std::time::Instant`, tokio) stops while the machine is suspended, so a
/// lease measured on it would seem to run on after a resume although the rest of the cluster
/// counted the whole suspend: the node would act on a lease that ended long ago (issue 11).
/// `CLOCK_BOOTTIME` runs on at the same rate, so the drift bound of the lease argument holds for it
/// as for the monotonic clock. A paused VM is a different case: its guest clocks, watchdog device
/// included, usually stop with it (docs/safety.md).
pub fn lease_clock() -> Duration {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(spec) => Duration::new(spec.tv_sec() as u64, spec.tv_nsec() as u32),
        // Linux has had CLOCK_BOOTTIME since 2.6.39; anything else falls back to the monotonic
        // clock, which is safe except across a suspend.
        Err(_) => {
            static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
            ORIGIN.get_or_init(std::time::Instant::now).elapsed()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_clock_moves_forward_with_the_monotonic_clock() {
        let (lease_before, monotonic_before) = (lease_clock(), std::time::Instant::now());
        std::thread::sleep(Duration::from_millis(20));
        let (lease_elapsed, monotonic_elapsed) = (lease_clock() - lease_before, monotonic_before.elapsed());
        assert!(lease_elapsed >= Duration::from_millis(20), "{lease_elapsed:?}");
        // No suspend during the test: both clocks agree closely.
        let gap = lease_elapsed.abs_diff(monotonic_elapsed);
        assert!(gap < Duration::from_millis(5), "{lease_elapsed:?} vs {monotonic_elapsed:?}");
    }
}
