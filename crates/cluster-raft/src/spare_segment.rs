//! The next log segment, created and zero-filled ahead of time by its own thread.
//!
//! ```text
//!  I/O thread: active segment half full ──request──> spare thread: write log/spare.tmp (zeros),
//!                                                     fsync ──> Ready(file)
//!  I/O thread: active segment full ──take()──> rename spare.tmp -> <first index>.seg, fsync dir
//!              (no spare ready: zero-fill the new segment inline, as before)
//! ```
//!
//! Creating a 16 MiB segment costs 10–40 ms here, and the I/O thread used to do it in the middle
//! of an append, while openraft waited for that append before doing anything else. The spare is
//! not a segment until renamed: its name does not end in `.seg`, and opening the log deletes a
//! leftover one (it may be half written).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

/// File name of the spare in the log directory.
pub(crate) const SPARE_NAME: &str = "spare.tmp";

/// Creates (or replaces) `path` as a file of `capacity` zero bytes, durably.
///
/// Real zeros, not a sparse or fallocated range: writing into unwritten extents would make every
/// `fdatasync` commit metadata again.
pub(crate) fn create_zeroed(path: &Path, capacity: u64) -> std::io::Result<File> {
    let file = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(path)?;
    let zeros = vec![0u8; 1024 * 1024];
    let mut done = 0;
    while done < capacity {
        let chunk = zeros.len().min((capacity - done) as usize);
        file.write_all_at(&zeros[..chunk], done)?;
        done += chunk as u64;
    }
    file.sync_all()?;
    Ok(file)
}

enum State {
    /// Nothing prepared or being prepared.
    Empty,
    Preparing,
    Ready(File),
}

/// Handle of the spare segment and its thread.
pub(crate) struct SpareSegment {
    path: PathBuf,
    capacity: u64,
    state: Arc<Mutex<State>>,
    requests: mpsc::Sender<()>,
    /// How many spares became segments.
    taken: Arc<std::sync::atomic::AtomicU64>,
}

impl SpareSegment {
    /// Removes a leftover spare in `log_dir` and starts the thread that prepares spares of
    /// `capacity` bytes on request.
    pub(crate) fn start(log_dir: &Path, capacity: u64) -> std::io::Result<SpareSegment> {
        let path = log_dir.join(SPARE_NAME);
        match std::fs::remove_file(&path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
        let state = Arc::new(Mutex::new(State::Empty));
        let (requests, received) = mpsc::channel::<()>();
        let (thread_path, thread_state) = (path.clone(), state.clone());
        std::thread::Builder::new().name("raft-log-spare".into()).spawn(move || {
            while received.recv().is_ok() {
                let started = std::time::Instant::now();
                let prepared = create_zeroed(&thread_path, capacity);
                let mut state = thread_state.lock().expect("spare segment lock poisoned");
                *state = match prepared {
                    Ok(file) => {
                        tracing::debug!(took_ms = started.elapsed().as_millis() as u64, "spare raft log segment ready");
                        State::Ready(file)
                    }
                    Err(err) => {
                        tracing::warn!(path = %thread_path.display(), error = %err, "cannot prepare the next raft log segment; it will be created when needed");
                        State::Empty
                    }
                };
            }
        })?;
        Ok(SpareSegment { path, capacity, state, requests, taken: Arc::default() })
    }

    /// Asks for a spare unless one is ready or being prepared.
    pub(crate) fn request(&self) {
        let mut state = self.state.lock().expect("spare segment lock poisoned");
        if matches!(*state, State::Empty) && self.requests.send(()).is_ok() {
            *state = State::Preparing;
        }
    }

    /// Turns the ready spare into the segment at `path` if it holds `capacity` bytes: renamed, the
    /// directory not yet synced (the caller does it). `None` if no spare is ready or it is too small.
    pub(crate) fn take(&self, path: &Path, capacity: u64) -> std::io::Result<Option<File>> {
        if capacity > self.capacity {
            return Ok(None);
        }
        let file = {
            let mut state = self.state.lock().expect("spare segment lock poisoned");
            match std::mem::replace(&mut *state, State::Empty) {
                State::Ready(file) => file,
                other => {
                    *state = other;
                    return Ok(None);
                }
            }
        };
        std::fs::rename(&self.path, path)?;
        self.taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(file))
    }

    /// Counts the spares that became segments.
    #[cfg(test)]
    pub(crate) fn taken(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.taken.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requested_spare_becomes_the_next_segment() {
        let dir = tempfile::tempdir().unwrap();
        let spare = SpareSegment::start(dir.path(), 64 * 1024).unwrap();
        let segment = dir.path().join("00000000000000000007.seg");
        assert!(spare.take(&segment, 64 * 1024).unwrap().is_none(), "nothing was requested yet");
        spare.request();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let file = loop {
            if let Some(file) = spare.take(&segment, 64 * 1024).unwrap() {
                break file;
            }
            assert!(std::time::Instant::now() < deadline, "the spare was not prepared within 10 s");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(file.metadata().unwrap().len(), 64 * 1024);
        assert_eq!(std::fs::read(&segment).unwrap(), vec![0u8; 64 * 1024]);
        assert!(!dir.path().join(SPARE_NAME).exists());
        // Taken: the next segment needs a new request, and a larger one is never served.
        assert!(spare.take(&dir.path().join("x.seg"), 64 * 1024).unwrap().is_none());
        spare.request();
        assert!(spare.take(&dir.path().join("y.seg"), 128 * 1024).unwrap().is_none());
    }

    #[test]
    fn a_leftover_spare_is_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SPARE_NAME), b"half written").unwrap();
        let _spare = SpareSegment::start(dir.path(), 4096).unwrap();
        assert!(!dir.path().join(SPARE_NAME).exists());
    }
}
