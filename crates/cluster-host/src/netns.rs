//! Running code inside another network namespace, on a dedicated thread (never a tokio worker).

use std::future::Future;
use std::path::Path;

/// Run the future made by `make` on a new thread that entered the network namespace at `netns_path`
/// (e.g. `/run/netns/NAME`), with its own current-thread tokio runtime. The thread ends with the call, so
/// no other thread ever changes namespace.
pub fn run_in_netns<F, Fut, T>(netns_path: &Path, make: F) -> std::io::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    let namespace = std::fs::File::open(netns_path)?;
    let thread = std::thread::Builder::new().name("netns".to_string()).spawn(move || -> std::io::Result<T> {
        nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(runtime.block_on(make()))
    })?;
    thread.join().map_err(|_| std::io::Error::other("thread inside the network namespace panicked"))?
}
