//! Mount-table operations tracked to completion, also when their caller goes away.
//!
//! `mount(2)` on a device that stopped answering blocks in the kernel, uninterruptibly: dropping the
//! future that waits for it (a `start_timeout`, the engine giving a start up at the lease's stop
//! budget) does not stop it, and the mount lands whenever the device answers again. So every
//! operation on a mountpoint runs here, in a task of its own:
//!
//! ```text
//!  caller ──run(target, op, undo)──► waits for the earlier operation on target, if any, then
//!                                    task: op.await ──► result to the caller, who acknowledges it
//!                                          │ caller gone (nobody acknowledged) and op succeeded
//!                                          └──► undo.await (unmount at once)
//!                                    then target is released: settle(target) returns
//!  settle(target, within) ──► Ok once nothing is in flight on target, or InFlight after `within`
//! ```
//!
//! At every instant a mount is either in flight here or its outcome is in the mount table, so a stop
//! or a monitor that first settles the mountpoint never reads "not mounted" while a mount of it may
//! still land.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::mounts::MountError;

struct Pending {
    /// What is in flight, e.g. `mount of /dev/sdb at /srv/data`.
    operation: String,
    /// Flips to true when the operation was released.
    done: watch::Receiver<bool>,
    /// When it began, for messages.
    began: tokio::time::Instant,
    /// Why it matters that it is still in flight, for the error of a `settle` that gave up.
    detail: &'static str,
}

/// A mount (an operation with an undo) may still land.
const MAY_LAND: &str = "cannot tell whether it will be mounted";
/// An unmount or a check keeps the mountpoint busy.
const BUSY: &str = "the mountpoint is busy until it returns";

/// Operations in flight, per mountpoint.
#[derive(Default)]
pub(crate) struct InFlight {
    pending: Mutex<HashMap<PathBuf, Pending>>,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight").field("targets", &self.lock().keys().collect::<Vec<_>>()).finish()
    }
}

/// Removes the target's record and wakes its waiters when dropped: also if the task running the
/// operation panics or is cancelled with its runtime.
struct Release {
    registry: Arc<InFlight>,
    target: PathBuf,
    done: watch::Sender<bool>,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.target);
        self.done.send_replace(true);
    }
}

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, HashMap<PathBuf, Pending>> {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What is in flight on `target` and since how long, if anything.
    #[cfg(test)]
    pub(crate) fn pending(&self, target: &Path) -> Option<(String, Duration)> {
        self.lock().get(target).map(|pending| (pending.operation.clone(), pending.began.elapsed()))
    }

    /// Runs `operation` on `target` to completion in a task of its own, once no earlier operation on
    /// `target` is in flight, and returns its result. If the caller goes away before it has taken a
    /// successful result, `undo` runs at once (a mount is unmounted). `target` stays in flight until
    /// then.
    pub(crate) async fn run<Operation, Undo>(
        self: &Arc<Self>,
        target: &Path,
        description: String,
        operation: Operation,
        undo: Option<Undo>,
    ) -> Result<(), MountError>
    where
        Operation: Future<Output = Result<(), MountError>> + Send + 'static,
        Undo: Future<Output = Result<(), MountError>> + Send + 'static,
    {
        let detail = if undo.is_some() { MAY_LAND } else { BUSY };
        let (done, mut released) = loop {
            let earlier = {
                let mut pending = self.lock();
                match pending.get(target) {
                    Some(earlier) => earlier.done.clone(),
                    None => {
                        let (done, waiters) = watch::channel(false);
                        let began = tokio::time::Instant::now();
                        pending.insert(
                            target.to_path_buf(),
                            Pending { operation: description.clone(), done: waiters.clone(), began, detail },
                        );
                        break (done, waiters);
                    }
                }
            };
            let mut earlier = earlier;
            // An error means the earlier operation's task is gone: released too.
            let _ = earlier.wait_for(|released| *released).await;
        };
        let release = Release { registry: self.clone(), target: target.to_path_buf(), done };
        let (result_sender, result) = oneshot::channel::<(Result<(), MountError>, oneshot::Sender<()>)>();
        tokio::spawn(async move {
            let release = release;
            let outcome = operation.await;
            let (acknowledge, acknowledged) = oneshot::channel();
            // The caller acknowledges in the same poll that receives the result, so "not acknowledged"
            // means it went away before it could act on it.
            let claimed = match result_sender.send((outcome.clone(), acknowledge)) {
                Ok(()) => acknowledged.await.is_ok(),
                Err(_) => false,
            };
            if !claimed {
                match (&outcome, undo) {
                    (Ok(()), Some(undo)) => {
                        tracing::warn!(operation = %description, "returned after its caller gave up: undoing it");
                        if let Err(error) = undo.await {
                            tracing::error!(operation = %description, %error, "failed to undo an abandoned operation");
                        }
                    }
                    (Ok(()), None) => tracing::info!(operation = %description, "returned after its caller gave up"),
                    (Err(error), _) => {
                        tracing::info!(operation = %description, %error, "failed after its caller gave up")
                    }
                }
            }
            drop(release);
        });
        match result.await {
            Ok((outcome, acknowledge)) => {
                let _ = acknowledge.send(());
                // Return once the target is released, so that the caller's next step (and anyone's
                // settle) finds nothing in flight. Dropped here, the result is already claimed.
                let _ = released.wait_for(|released| *released).await;
                outcome
            }
            Err(_) => Err(MountError::Failed {
                action: description_of(target),
                message: "the task running it ended without an answer".to_string(),
            }),
        }
    }

    /// Waits, at most `within`, until no operation on `target` is in flight (an abandoned mount that
    /// landed meanwhile is undone first). After `within`, [`MountError::InFlight`] names what is still
    /// in flight.
    pub(crate) async fn settle(&self, target: &Path, within: Duration) -> Result<(), MountError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (operation, mut done, began, detail) = match self.lock().get(target) {
                None => return Ok(()),
                Some(pending) => (pending.operation.clone(), pending.done.clone(), pending.began, pending.detail),
            };
            // Released (or its task is gone): look again, another operation may have begun.
            let released = tokio::time::timeout_at(deadline, done.wait_for(|released| *released)).await.is_ok();
            if !released {
                return Err(MountError::InFlight { operation, waited: began.elapsed(), detail: detail.to_string() });
            }
        }
    }
}

fn description_of(target: &Path) -> String {
    format!("operate on {}", target.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// An operation that waits for `gate` to open, then succeeds (and counts itself in `done`).
    fn gated(gate: &watch::Sender<bool>, done: &Arc<AtomicU32>) -> impl Future<Output = Result<(), MountError>> {
        let mut gate = gate.subscribe();
        let done = done.clone();
        async move {
            let _ = gate.wait_for(|open| *open).await;
            done.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn counted(undone: &Arc<AtomicU32>) -> impl Future<Output = Result<(), MountError>> {
        let undone = undone.clone();
        async move {
            undone.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_operation_is_undone_when_it_completes_and_settle_waits_for_it() {
        let registry = Arc::new(InFlight::default());
        let (gate, _) = watch::channel(false);
        let (done, undone) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let target = Path::new("/srv/data");
        let caller = registry.run(
            target,
            "mount of /dev/sdb at /srv/data".to_string(),
            gated(&gate, &done),
            Some(counted(&undone)),
        );
        // The caller gives up (as `select!` or a timeout does).
        assert!(tokio::time::timeout(Duration::from_secs(2), caller).await.is_err());
        assert_eq!(
            registry.pending(target).map(|(operation, _)| operation).as_deref(),
            Some("mount of /dev/sdb at /srv/data")
        );
        let error = registry.settle(target, Duration::from_secs(1)).await.expect_err("still in flight");
        assert_eq!(
            error.to_string(),
            "mount of /dev/sdb at /srv/data still in flight after 3s: cannot tell whether it will be mounted"
        );
        // The device answers while a stop waits: the mount completes, is undone, then the stop goes on.
        let settle = registry.settle(target, Duration::from_secs(10));
        let open = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            gate.send_replace(true);
        };
        let (settled, ()) = tokio::join!(settle, open);
        settled.expect("settled once the operation ended");
        assert_eq!((done.load(Ordering::SeqCst), undone.load(Ordering::SeqCst)), (1, 1));
        assert!(registry.pending(target).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_claimed_result_is_not_undone_and_operations_on_one_target_run_one_after_the_other() {
        let registry = Arc::new(InFlight::default());
        let (gate, _) = watch::channel(false);
        let (done, undone) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let target = Path::new("/srv/data");
        let first = registry.run(target, "first".to_string(), gated(&gate, &done), Some(counted(&undone)));
        let second = async {
            // Begins while the first is in flight: runs only after it.
            tokio::time::sleep(Duration::from_millis(10)).await;
            let began = done.load(Ordering::SeqCst);
            registry
                .run(target, "second".to_string(), counted(&done), None::<std::future::Ready<_>>)
                .await
                .expect("second");
            began
        };
        let open = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(done.load(Ordering::SeqCst), 0, "the second waited for the first");
            gate.send_replace(true);
        };
        let (first, began, ()) = tokio::join!(first, second, open);
        first.expect("first");
        assert_eq!(began, 0);
        assert_eq!(done.load(Ordering::SeqCst), 2);
        assert_eq!(undone.load(Ordering::SeqCst), 0, "a result the caller took is never undone");
        registry.settle(target, Duration::ZERO).await.expect("nothing in flight");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_abandoned_operation_is_not_undone() {
        let registry = Arc::new(InFlight::default());
        let undone = Arc::new(AtomicU32::new(0));
        let target = Path::new("/srv/data");
        let failing = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Err(MountError::Failed { action: "mount".to_string(), message: "bad superblock".to_string() })
        };
        let caller = registry.run(target, "mount".to_string(), failing, Some(counted(&undone)));
        assert!(tokio::time::timeout(Duration::from_secs(1), caller).await.is_err());
        registry.settle(target, Duration::from_secs(10)).await.expect("released");
        assert_eq!(undone.load(Ordering::SeqCst), 0);
    }
}
