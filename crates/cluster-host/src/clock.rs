//! The clock: monotonic time and sleeping, behind a trait so timer logic can be driven by paused tokio time.

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
