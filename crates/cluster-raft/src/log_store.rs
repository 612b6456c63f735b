//! The Raft log: segment files of checksummed records, group-committed by a flusher thread.
//!
//! ```text
//!  data_dir/raft/log/00000000000000000001.seg   records of entries 1..=k
//!  data_dir/raft/log/0000000000000000000k+1.seg records of entries k+1..   (the active segment)
//!  data_dir/raft/vote, data_dir/raft/purged     small checksummed files, replaced atomically
//!
//!  record = len: u32 LE | crc32(payload): u32 LE | payload = version byte + postcard(Entry)
//! ```
//!
//! **Formats.** Record version 1 is v0.1.0's entry (cluster version 1), version 2 this release's.
//! While the cluster runs at version 1 every record is written in version 1, so the node can still
//! be downgraded to v0.1.0. v0.1.0 clears a record it cannot read at the end of its log as if it
//! were torn, losing entries it acknowledged; so before the first version-2 record, the vote file is
//! rewritten in a format v0.1.0 refuses to start with (it reads the vote first, before the log):
//! a downgraded node stops with an error instead of cutting its log.
//!
//! Segments are preallocated with zeros (`SEGMENT_BYTES`) and records are written in place, so an
//! `fdatasync` never has to commit a file-size change to the filesystem journal (measured here:
//! 0.22 ms instead of 2.8 ms at p50). An all-zero record header marks the end of the data.
//!
//! **No disk I/O happens on the caller's thread.** `append` records the entries in memory (reads
//! never touch the disk) and queues their records to the log's I/O thread; `truncate`, `purge` and
//! `save_vote` queue their work too and await its completion without blocking a runtime thread. The
//! I/O thread does every write in order, and after each batch of appends issues one `fdatasync` for
//! all of them and only then tells openraft the entries are durable (group commit). A stalled disk
//! therefore stalls only that thread: clusterd's leases, executor and watchdog, which share the
//! runtime with Raft, keep running (found by the lab's disk-stall test: a blocking write on a
//! runtime thread froze the whole daemon, and a lease-only owner kept its package while another node
//! started it).
//!
//! On open, every segment is scanned. A record whose checksum or length is wrong at the very end of
//! the last segment is a torn write (it was never acknowledged): it is zeroed and reported.
//! A bad record followed by good ones, or in an older segment, is corruption: opening fails with an
//! error naming the file and offset, and nothing is applied.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::ops::RangeBounds;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use tokio::sync::oneshot;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogId, RaftLogReader};

use cluster_model::ClusterVersion;

use crate::compat::{entry_from_v0_1, entry_to_v0_1, EntryV01};
use crate::files::{read_checked, sync_dir, write_atomic};
use crate::spare_segment::{create_zeroed, SpareSegment};
use crate::types::{io_error, Entry, LogId, StorageError, TypeConfig, Vote};

/// Size of a preallocated segment; a record that does not fit starts a new one.
const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// Record versions: v0.1.0's entry, and this release's.
const RECORD_V0_1: u8 = 1;
const RECORD_VERSION: u8 = 2;
/// The start of a vote file of format 2: an unterminated varint, which v0.1.0 fails to decode as a
/// vote (so it refuses to start), then words for whoever looks at the file.
const VOTE_MARKER: &[u8] = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xffclusterd vote, format 2 (cluster version 0.2.0)";
const HEADER_BYTES: usize = 8;
/// Upper bound of one record; anything larger in a header is garbage.
const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;

/// What opening the log found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Entries loaded.
    pub entries: usize,
    /// A torn tail that was zeroed: file, offset and number of bytes cleared.
    pub truncated_tail: Option<(PathBuf, u64, u64)>,
}

/// Opening the log failed; the node must not start.
#[derive(Debug, thiserror::Error)]
pub enum LogOpenError {
    #[error("raft log {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("raft log {path} is corrupt at offset {offset}: {what}; valid records follow, so this is not a torn write. Refusing to start: restore the data directory from a backup, or remove it and re-add this node to the cluster")]
    Corrupt { path: PathBuf, offset: u64, what: String },
    #[error("raft log {path}: expected entry {expected} at offset {offset}, found entry {found}")]
    Gap { path: PathBuf, offset: u64, expected: u64, found: u64 },
}

/// A segment as the log's bookkeeping sees it (its file belongs to the I/O thread).
struct Segment {
    path: PathBuf,
    /// End of the data: where the next record goes.
    len: u64,
    /// Preallocated size of the file.
    capacity: u64,
}

struct LogInner {
    dir: PathBuf,
    vote: Option<Vote>,
    /// The last vote queued for writing (the vote file holds it once the I/O thread got there).
    queued_vote: Option<Vote>,
    /// The cluster version of the records written from now on, and of the vote file.
    format: ClusterVersion,
    purged: Option<LogId>,
    entries: BTreeMap<u64, Entry>,
    /// index -> (segment start, byte offset of its record)
    locations: BTreeMap<u64, (u64, u64)>,
    /// segment start -> segment; the last one is the active segment
    segments: BTreeMap<u64, Segment>,
    /// Size of a new segment.
    segment_bytes: u64,
}

/// A new segment to create and preallocate before writing into it.
struct NewSegment {
    path: PathBuf,
    capacity: u64,
}

/// Work for the I/O thread, queued in the order the log changed.
enum IoJob {
    /// Write `bytes` at `offset` of segment `start` (created first when `create` is set); durable
    /// (and `callback` called) at the end of the batch.
    Append {
        start: u64,
        create: Option<NewSegment>,
        offset: u64,
        bytes: Vec<u8>,
        entries: u64,
        callback: LogFlushed<TypeConfig>,
    },
    /// Cut segment `start` at `offset` and delete the segments after it.
    Truncate { start: u64, offset: u64, remove: Vec<(u64, PathBuf)>, done: oneshot::Sender<std::io::Result<()>> },
    /// Write the purge mark, then delete the segments that hold only purged entries.
    Purge { mark: Vec<u8>, remove: Vec<(u64, PathBuf)>, done: oneshot::Sender<std::io::Result<()>> },
    /// Write the vote.
    Vote { bytes: Vec<u8>, done: oneshot::Sender<std::io::Result<()>> },
}

/// The durable Raft log (openraft `RaftLogStorage`).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
    io: mpsc::Sender<IoJob>,
    progress: Arc<AppendProgress>,
    /// How many segments were prepared ahead of time (the rest were created when needed).
    #[cfg(test)]
    spares_taken: Arc<std::sync::atomic::AtomicU64>,
}

/// How many `append` calls the log received and how many it completed (made durable, or failed).
///
/// openraft 0.9's core waits for each append to be durable before it does anything else, so
/// "every append received so far has completed" means the core is free to append again: the
/// proposer (`proposer.rs`) uses it to decide when to hand over its next batch.
pub(crate) struct AppendProgress {
    received: std::sync::atomic::AtomicU64,
    completed: tokio::sync::watch::Sender<u64>,
    /// Bytes of records appended since the log was opened (what a snapshot is weighed against).
    bytes: std::sync::atomic::AtomicU64,
}

impl AppendProgress {
    fn new() -> AppendProgress {
        AppendProgress {
            received: std::sync::atomic::AtomicU64::new(0),
            completed: tokio::sync::watch::Sender::new(0),
            bytes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Number of `append` calls received so far.
    pub(crate) fn received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Watches the number of `append` calls completed.
    pub(crate) fn completed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.completed.subscribe()
    }

    fn complete(&self, appends: u64) {
        if appends > 0 {
            self.completed.send_modify(|completed| *completed += appends);
        }
    }
}

/// A reader sharing the in-memory entries of a [`LogStore`].
#[derive(Clone)]
pub struct LogReader {
    inner: Arc<Mutex<LogInner>>,
}

fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}.seg"))
}

/// The record of `entry` in `format`; an entry that needs a later format must not come here (see
/// `LogStore::append`).
fn encode_record(entry: &Entry, format: ClusterVersion) -> Vec<u8> {
    let payload = match format {
        ClusterVersion::V0_1 => {
            let old = entry_to_v0_1(entry).expect("the log raised its format for newer entries");
            postcard::to_extend(&old, vec![RECORD_V0_1]).expect("log entries always serialize")
        }
        _ => postcard::to_extend(entry, vec![RECORD_VERSION]).expect("log entries always serialize"),
    };
    let mut record = Vec::with_capacity(HEADER_BYTES + payload.len());
    record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    record.extend_from_slice(&payload);
    record
}

enum Parsed {
    Record {
        entry: Box<Entry>,
        next: usize,
    },
    /// An all-zero header: the end of the written data.
    End,
    Bad {
        what: String,
    },
}

fn parse_record(bytes: &[u8], at: usize) -> Parsed {
    let rest = &bytes[at..];
    if rest.len() >= HEADER_BYTES && rest[..HEADER_BYTES].iter().all(|b| *b == 0) {
        return Parsed::End;
    }
    if rest.len() < HEADER_BYTES {
        return Parsed::Bad { what: format!("incomplete record header ({} bytes)", rest.len()) };
    }
    let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_RECORD_BYTES {
        return Parsed::Bad { what: format!("impossible record length {len}") };
    }
    if rest.len() < HEADER_BYTES + len {
        return Parsed::Bad { what: format!("record of {len} bytes cut short at {} bytes", rest.len() - HEADER_BYTES) };
    }
    let payload = &rest[HEADER_BYTES..HEADER_BYTES + len];
    if crc32fast::hash(payload) != crc {
        return Parsed::Bad { what: "checksum mismatch".into() };
    }
    let entry = match payload[0] {
        RECORD_V0_1 => postcard::from_bytes::<EntryV01>(&payload[1..]).map(entry_from_v0_1),
        RECORD_VERSION => postcard::from_bytes::<Entry>(&payload[1..]),
        other => return Parsed::Bad { what: format!("unknown record version {other}") },
    };
    match entry {
        Ok(entry) => Parsed::Record { entry: Box::new(entry), next: at + HEADER_BYTES + len },
        Err(err) => Parsed::Bad { what: format!("undecodable entry: {err}") },
    }
}

/// The vote file's payload in `format`.
fn vote_bytes(vote: Option<&Vote>, format: ClusterVersion) -> Vec<u8> {
    match (format, vote) {
        (ClusterVersion::V0_1, Some(vote)) => postcard::to_allocvec(vote).expect("votes always serialize"),
        (ClusterVersion::V0_1, None) => Vec::new(),
        _ => postcard::to_extend(&vote, VOTE_MARKER.to_vec()).expect("votes always serialize"),
    }
}

/// Reads a vote file's payload: v0.1.0's (a vote) or format 2 (the marker, then an optional vote).
fn parse_vote(bytes: &[u8]) -> Result<(Option<Vote>, ClusterVersion), postcard::Error> {
    match bytes.strip_prefix(VOTE_MARKER) {
        Some(rest) => Ok((postcard::from_bytes::<Option<Vote>>(rest)?, ClusterVersion::V0_2)),
        None => Ok((Some(postcard::from_bytes::<Vote>(bytes)?), ClusterVersion::V0_1)),
    }
}

/// Offset of the last non-zero byte at or after `from`.
fn last_nonzero(bytes: &[u8], from: usize) -> Option<usize> {
    bytes[from..].iter().rposition(|b| *b != 0).map(|position| from + position)
}

/// Whether any valid record starts after `from` (then a bad record is corruption, not a torn tail).
/// Only the non-zero region can hold one, so the scan stops at the last non-zero byte.
fn valid_record_after(bytes: &[u8], from: usize) -> bool {
    let Some(last) = last_nonzero(bytes, from + 1) else {
        return false;
    };
    (from + 1..=last).any(|at| matches!(parse_record(bytes, at), Parsed::Record { .. }))
}

impl LogStore {
    /// Opens (or creates) the log under `dir`, recovering a torn tail and refusing corruption.
    pub fn open(dir: &Path) -> Result<(LogStore, RecoveryReport), LogOpenError> {
        LogStore::open_with(dir, SEGMENT_BYTES)
    }

    /// [`LogStore::open`] with segments of `segment_bytes` (tests use small ones).
    fn open_with(dir: &Path, segment_bytes: u64) -> Result<(LogStore, RecoveryReport), LogOpenError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| LogOpenError::Io { path, source }
        };
        let log_dir = dir.join("log");
        fs::create_dir_all(&log_dir).map_err(io(&log_dir))?;
        let (vote, mut format) = read_checked(&dir.join("vote"))
            .map_err(io(&dir.join("vote")))?
            .map(|bytes| parse_vote(&bytes))
            .transpose()
            .map_err(|err| LogOpenError::Io { path: dir.join("vote"), source: std::io::Error::other(err.to_string()) })?
            .unwrap_or((None, ClusterVersion::V0_1));
        let purged = read_checked(&dir.join("purged"))
            .map_err(io(&dir.join("purged")))?
            .map(|bytes| postcard::from_bytes::<LogId>(&bytes))
            .transpose()
            .map_err(|err| LogOpenError::Io {
                path: dir.join("purged"),
                source: std::io::Error::other(err.to_string()),
            })?;

        let mut starts: Vec<u64> = Vec::new();
        for item in fs::read_dir(&log_dir).map_err(io(&log_dir))? {
            let name = item.map_err(io(&log_dir))?.file_name();
            let name = name.to_string_lossy();
            if let Some(start) = name.strip_suffix(".seg").and_then(|stem| stem.parse::<u64>().ok()) {
                starts.push(start);
            }
        }
        starts.sort_unstable();

        let mut report = RecoveryReport::default();
        let mut files: BTreeMap<u64, File> = BTreeMap::new();
        let mut inner = LogInner {
            dir: log_dir.clone(),
            vote,
            queued_vote: vote,
            format,
            purged,
            entries: BTreeMap::new(),
            locations: BTreeMap::new(),
            segments: BTreeMap::new(),
            segment_bytes,
        };
        let mut expected: Option<u64> = None;
        for (position, start) in starts.iter().enumerate() {
            let path = segment_path(&log_dir, *start);
            let bytes = fs::read(&path).map_err(io(&path))?;
            let is_last = position + 1 == starts.len();
            let mut at = 0usize;
            let mut cleared = None;
            while at < bytes.len() {
                match parse_record(&bytes, at) {
                    Parsed::Record { entry, next } => {
                        let index = entry.log_id.index;
                        let want = expected.unwrap_or(*start);
                        if index != want {
                            return Err(LogOpenError::Gap { path, offset: at as u64, expected: want, found: index });
                        }
                        expected = Some(index + 1);
                        inner.locations.insert(index, (*start, at as u64));
                        if purged.is_none_or(|p| index > p.index) {
                            inner.entries.insert(index, *entry);
                        }
                        at = next;
                    }
                    Parsed::End => {
                        // Anything written after the end of the data was never acknowledged.
                        cleared = last_nonzero(&bytes, at)
                            .map(|last| (at, last + 1 - at, "data after the end marker".to_owned()));
                        break;
                    }
                    Parsed::Bad { what } => {
                        if !is_last || valid_record_after(&bytes, at) {
                            return Err(LogOpenError::Corrupt { path, offset: at as u64, what });
                        }
                        cleared = Some((at, last_nonzero(&bytes, at).map_or(0, |last| last + 1 - at), what));
                        break;
                    }
                }
            }
            if let Some((offset, length, what)) = cleared.filter(|(_, length, _)| *length > 0) {
                let file = OpenOptions::new().write(true).open(&path).map_err(io(&path))?;
                file.write_all_at(&vec![0u8; length], offset as u64).map_err(io(&path))?;
                file.sync_all().map_err(io(&path))?;
                tracing::warn!(path = %path.display(), offset, cleared = length, reason = %what, "cut off a torn tail of the raft log");
                report.truncated_tail = Some((path.clone(), offset as u64, length as u64));
            }
            let file = OpenOptions::new().read(true).write(true).open(&path).map_err(io(&path))?;
            let capacity = bytes.len() as u64;
            files.insert(*start, file);
            inner.segments.insert(*start, Segment { path, len: at as u64, capacity });
        }
        report.entries = inner.entries.len();
        // (A record of version 2 is written only after the vote file of format 2; a log copied from
        // elsewhere may lack it, so the newest entry decides too.)
        let newest = inner.entries.values().map(entry_version).max().unwrap_or(ClusterVersion::V0_1);
        format = format.max(newest);
        inner.format = format;

        let (sender, jobs) = mpsc::channel::<IoJob>();
        let raft_dir = dir.to_owned();
        let progress = Arc::new(AppendProgress::new());
        let spare = SpareSegment::start(&log_dir, segment_bytes).map_err(io(&log_dir))?;
        #[cfg(test)]
        let spares_taken = spare.taken();
        let thread = IoThread {
            log_dir,
            raft_dir,
            files,
            failure: None,
            stats: IoStats::default(),
            progress: progress.clone(),
            spare,
            spare_requested_for: None,
            segment_bytes,
        };
        std::thread::Builder::new().name("raft-log-io".into()).spawn(move || thread.run(jobs)).map_err(io(dir))?;
        let log = LogStore {
            inner: Arc::new(Mutex::new(inner)),
            io: sender,
            progress,
            #[cfg(test)]
            spares_taken,
        };
        Ok((log, report))
    }

    /// Queues `job` for the I/O thread.
    fn queue(&self, job: IoJob) -> Result<(), std::io::Error> {
        self.io.send(job).map_err(|_| std::io::Error::other("raft log i/o thread stopped"))
    }

    /// Queues a job that reports completion, and awaits it without blocking the runtime.
    async fn run_io(&self, job: impl FnOnce(oneshot::Sender<std::io::Result<()>>) -> IoJob) -> std::io::Result<()> {
        let (done, finished) = oneshot::channel();
        self.queue(job(done))?;
        finished.await.unwrap_or_else(|_| Err(std::io::Error::other("raft log i/o thread stopped")))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().expect("raft log mutex poisoned")
    }
}

/// The thread that owns the segment files and does every write of the log, in order.
struct IoThread {
    log_dir: PathBuf,
    /// Where the vote and the purge mark live.
    raft_dir: PathBuf,
    files: BTreeMap<u64, File>,
    /// The first write error: every later append fails too (the log on disk has a hole).
    failure: Option<std::io::ErrorKind>,
    stats: IoStats,
    progress: Arc<AppendProgress>,
    /// The next segment, prepared ahead of time.
    spare: SpareSegment,
    /// The active segment for which a spare was last requested.
    spare_requested_for: Option<u64>,
    segment_bytes: u64,
}

/// How the log's writes are grouped, logged at debug level every [`IoStats::PERIOD`]: appends
/// (openraft `append` calls) and entries per `fdatasync`, and what the syncs cost.
#[derive(Default)]
struct IoStats {
    since: Option<std::time::Instant>,
    flushes: u64,
    appends: u64,
    entries: u64,
    bytes: u64,
    max_appends_per_flush: u64,
    fsyncs: u64,
    fsync_total: std::time::Duration,
    fsync_max: std::time::Duration,
}

impl IoStats {
    const PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

    fn append(&mut self, entries: u64, bytes: u64) {
        self.appends += 1;
        self.entries += entries;
        self.bytes += bytes;
    }

    fn fsync(&mut self, took: std::time::Duration) {
        self.fsyncs += 1;
        self.fsync_total += took;
        self.fsync_max = self.fsync_max.max(took);
    }

    fn flushed(&mut self, appends: u64) {
        self.flushes += 1;
        self.max_appends_per_flush = self.max_appends_per_flush.max(appends);
        let now = std::time::Instant::now();
        let since = *self.since.get_or_insert(now);
        if now.duration_since(since) >= Self::PERIOD {
            let flushes = self.flushes.max(1) as f64;
            tracing::debug!(
                secs = now.duration_since(since).as_secs_f64(),
                flushes = self.flushes,
                appends = self.appends,
                entries = self.entries,
                bytes = self.bytes,
                appends_per_flush = self.appends as f64 / flushes,
                entries_per_flush = self.entries as f64 / flushes,
                max_appends_per_flush = self.max_appends_per_flush,
                fsync_mean_us = self.fsync_total.as_micros() as u64 / self.fsyncs.max(1),
                fsync_max_us = self.fsync_max.as_micros() as u64,
                "raft log i/o"
            );
            *self = IoStats { since: Some(now), ..IoStats::default() };
        }
    }
}

impl IoThread {
    /// Group commit: writes every queued append, one `fdatasync` per segment written, then every
    /// callback in order. Other jobs first make the appends before them durable.
    fn run(mut self, jobs: mpsc::Receiver<IoJob>) {
        let mut pending: Vec<LogFlushed<TypeConfig>> = Vec::new();
        let mut written: Vec<u64> = Vec::new();
        while let Ok(first) = jobs.recv() {
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    IoJob::Append { start, create, offset, bytes, entries, callback } => {
                        self.stats.append(entries, bytes.len() as u64);
                        if self.failure.is_none() {
                            if let Err(err) = self.write(start, create, offset, &bytes) {
                                tracing::error!(error = %err, "raft log write failed");
                                self.failure = Some(err.kind());
                            }
                        }
                        if !written.contains(&start) {
                            written.push(start);
                        }
                        pending.push(callback);
                    }
                    other => {
                        self.flush(&mut pending, &mut written);
                        self.other(other);
                    }
                }
                next = jobs.try_recv().ok();
            }
            self.flush(&mut pending, &mut written);
        }
    }

    fn write(&mut self, start: u64, create: Option<NewSegment>, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        if let Some(segment) = create {
            let started = std::time::Instant::now();
            let (file, spare) = match self.spare.take(&segment.path, segment.capacity)? {
                Some(file) => (file, true),
                None => (create_zeroed(&segment.path, segment.capacity)?, false),
            };
            sync_dir(&self.log_dir)?;
            self.files.insert(start, file);
            tracing::debug!(start, spare, took_us = started.elapsed().as_micros() as u64, "new raft log segment");
        }
        let file = self.files.get(&start).ok_or_else(|| std::io::Error::other(format!("no segment {start}")))?;
        file.write_all_at(bytes, offset)?;
        // Past half of the active segment, the next one is prepared in the background (once).
        if offset + bytes.len() as u64 > self.segment_bytes / 2 && self.spare_requested_for != Some(start) {
            self.spare_requested_for = Some(start);
            self.spare.request();
        }
        Ok(())
    }

    /// Makes the written segments durable, then tells openraft, in order.
    fn flush(&mut self, pending: &mut Vec<LogFlushed<TypeConfig>>, written: &mut Vec<u64>) {
        if pending.is_empty() && written.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let pending_count = pending.len() as u64;
        for start in written.drain(..) {
            if let Some(file) = self.files.get(&start) {
                let result = file.sync_data();
                self.stats.fsync(started.elapsed());
                if let Err(err) = result {
                    tracing::error!(error = %err, "raft log fdatasync failed");
                    self.failure.get_or_insert(err.kind());
                }
            }
        }
        for callback in pending.drain(..) {
            let outcome = match self.failure {
                None => Ok(()),
                Some(kind) => Err(std::io::Error::new(kind, "an earlier raft log write failed")),
            };
            callback.log_io_completed(outcome);
        }
        self.progress.complete(pending_count);
        self.stats.flushed(pending_count);
    }

    fn other(&mut self, job: IoJob) {
        match job {
            IoJob::Append { .. } => unreachable!("appends are handled by `run`"),
            IoJob::Truncate { start, offset, remove, done } => {
                let result = (|| {
                    for (later, path) in &remove {
                        self.files.remove(later);
                        fs::remove_file(path)?;
                    }
                    let file =
                        self.files.get(&start).ok_or_else(|| std::io::Error::other(format!("no segment {start}")))?;
                    file.set_len(offset)?;
                    file.sync_all()?;
                    sync_dir(&self.log_dir)
                })();
                let _ = done.send(result);
            }
            IoJob::Purge { mark, remove, done } => {
                let result = (|| {
                    write_atomic(&self.raft_dir.join("purged"), &mark)?;
                    for (start, path) in &remove {
                        self.files.remove(start);
                        fs::remove_file(path)?;
                    }
                    sync_dir(&self.log_dir)
                })();
                let _ = done.send(result);
            }
            IoJob::Vote { bytes, done } => {
                let written = write_atomic(&self.raft_dir.join("vote"), &bytes);
                if let Err(err) = &written {
                    // Appends queued after it (records of a raised format among them) must not land.
                    self.failure.get_or_insert(err.kind());
                }
                let _ = done.send(written);
            }
        }
    }
}

impl LogInner {
    fn read_range<RB: RangeBounds<u64>>(&self, range: RB) -> Vec<Entry> {
        self.entries.range(range).map(|(_, entry)| entry.clone()).collect()
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.entries.values().next_back().map(|entry| entry.log_id).or(self.purged)
    }

    /// The segment to append `bytes` bytes to and the offset there, starting a new preallocated one
    /// (returned for the I/O thread to create) when there is none or the active one has no room left.
    fn place(&mut self, next_index: u64, bytes: u64) -> (u64, u64, Option<NewSegment>) {
        let needed = bytes + HEADER_BYTES as u64;
        let full = self
            .segments
            .values()
            .next_back()
            .is_none_or(|segment| segment.len > 0 && segment.len + needed > segment.capacity);
        let mut create = None;
        if full {
            let path = segment_path(&self.dir, next_index);
            let capacity = self.segment_bytes.max(needed);
            create = Some(NewSegment { path: path.clone(), capacity });
            self.segments.insert(next_index, Segment { path, len: 0, capacity });
        }
        let (start, segment) = self.segments.iter_mut().next_back().expect("an active segment exists");
        let offset = segment.len;
        segment.len += bytes;
        (*start, offset, create)
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self.inner.lock().expect("raft log mutex poisoned").read_range(range))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self.lock().read_range(range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let inner = self.lock();
        Ok(LogState { last_purged_log_id: inner.purged, last_log_id: inner.last_log_id() })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader { inner: self.inner.clone() }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let (done, finished) = oneshot::channel();
        let queued = {
            // Under the lock: the file's format and a marker written by `raise_format` stay in order.
            let mut inner = self.lock();
            inner.queued_vote = Some(*vote);
            let bytes = vote_bytes(Some(vote), inner.format);
            self.queue(IoJob::Vote { bytes, done })
        };
        let written = match queued {
            Ok(()) => finished.await.unwrap_or_else(|_| Err(std::io::Error::other("raft log i/o thread stopped"))),
            Err(err) => Err(err),
        };
        written.map_err(|err| io_error(ErrorSubject::Vote, ErrorVerb::Write, err))?;
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.lock().vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut entries = entries.into_iter().peekable();
        let Some(first) = entries.peek() else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let first_index = first.log_id.index;
        let batch: Vec<Entry> = entries.collect();
        // An entry v0.1.0 cannot read (the cluster version was raised, or, defensively, a newer
        // leader's entry): the vote file goes to format 2 before its record is written.
        let needed = batch.iter().map(entry_version).max().unwrap_or(ClusterVersion::V0_1);
        let format = self.raise(needed).map_err(|err| io_error(ErrorSubject::Logs, ErrorVerb::Write, err))?;
        let mut bytes = Vec::new();
        let mut records = Vec::new();
        let records_count = batch.len() as u64;
        for entry in &batch {
            records.push((entry.log_id.index, bytes.len() as u64));
            bytes.extend_from_slice(&encode_record(entry, format));
        }
        let appended_bytes = bytes.len() as u64;
        let job = {
            let mut inner = self.lock();
            let (start, offset, create) = inner.place(first_index, appended_bytes);
            for entry in batch {
                inner.entries.insert(entry.log_id.index, entry);
            }
            for (index, at) in records {
                inner.locations.insert(index, (start, offset + at));
            }
            IoJob::Append { start, create, offset, bytes, entries: records_count, callback }
        };
        self.progress.received.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.progress.bytes.fetch_add(appended_bytes, std::sync::atomic::Ordering::Relaxed);
        // Queued under no lock; the I/O thread keeps the order of the queue.
        if let Err(mpsc::SendError(IoJob::Append { callback, .. })) = self.io.send(job) {
            callback.log_io_completed(Err(std::io::Error::other("raft log i/o thread stopped")));
            self.progress.complete(1);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let job = {
            let mut inner = self.lock();
            let Some(&(start, offset)) = inner.locations.get(&log_id.index) else {
                return Ok(());
            };
            let later: Vec<u64> = inner.segments.range(start + 1..).map(|(start, _)| *start).collect();
            let remove: Vec<(u64, PathBuf)> = later
                .into_iter()
                .map(|later| (later, inner.segments.remove(&later).expect("listed segment").path))
                .collect();
            inner.segments.get_mut(&start).expect("segment of a located entry").len = offset;
            inner.entries.split_off(&log_id.index);
            inner.locations.split_off(&log_id.index);
            move |done| IoJob::Truncate { start, offset, remove, done }
        };
        self.run_io(job).await.map_err(|err| io_error(ErrorSubject::Logs, ErrorVerb::Delete, err))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let job = {
            let mut inner = self.lock();
            let mark = postcard::to_allocvec(&log_id).expect("log ids always serialize");
            inner.purged = Some(log_id);
            let kept = inner.entries.split_off(&(log_id.index + 1));
            inner.entries = kept;
            // A segment can go once the next segment starts at or below the first kept index.
            let starts: Vec<u64> = inner.segments.keys().copied().collect();
            let mut remove = Vec::new();
            for pair in starts.windows(2) {
                if pair[1] <= log_id.index + 1 {
                    remove.push((pair[0], inner.segments.remove(&pair[0]).expect("listed segment").path));
                }
            }
            let kept_locations = inner.locations.split_off(&(log_id.index + 1));
            inner.locations = kept_locations;
            move |done| IoJob::Purge { mark, remove, done }
        };
        self.run_io(job).await.map_err(|err| io_error(ErrorSubject::Logs, ErrorVerb::Delete, err))
    }
}

/// The oldest format that can hold `entry`.
fn entry_version(entry: &Entry) -> ClusterVersion {
    match &entry.payload {
        openraft::EntryPayload::Normal(command) => command.required_version(),
        _ => ClusterVersion::V0_1,
    }
}

impl LogStore {
    /// Writes records of `version`'s format from now on (never lower): first the vote file in
    /// format 2, which v0.1.0 refuses to start with. Called once the cluster version is committed.
    pub(crate) async fn raise_format(&self, version: ClusterVersion) -> std::io::Result<()> {
        let (done, finished) = oneshot::channel();
        let queued = {
            let mut inner = self.lock();
            if version <= inner.format {
                return Ok(());
            }
            inner.format = version;
            let bytes = vote_bytes(inner.queued_vote.as_ref(), version);
            self.queue(IoJob::Vote { bytes, done })
        };
        queued?;
        finished.await.unwrap_or_else(|_| Err(std::io::Error::other("raft log i/o thread stopped")))
    }

    /// Raises the format to `needed` if it is lower (queueing the vote file of the new format,
    /// which the I/O thread writes before anything queued later); returns the format to write in.
    fn raise(&self, needed: ClusterVersion) -> std::io::Result<ClusterVersion> {
        let mut inner = self.lock();
        if needed > inner.format {
            tracing::warn!(format = %needed, "raft log: an entry needs a newer format; raising it");
            inner.format = needed;
            let bytes = vote_bytes(inner.queued_vote.as_ref(), needed);
            let (done, _ignored) = oneshot::channel();
            self.queue(IoJob::Vote { bytes, done })?;
        }
        Ok(inner.format)
    }

    /// The format records are written in.
    pub(crate) fn format(&self) -> ClusterVersion {
        self.lock().format
    }

    /// Bytes of records appended since the log was opened.
    pub(crate) fn appended_bytes(&self) -> u64 {
        self.progress.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How far the log's appends got (for the proposer).
    pub(crate) fn append_progress(&self) -> Arc<AppendProgress> {
        self.progress.clone()
    }

    /// The id of the last entry in the log (or the last purged one).
    pub(crate) fn last_log_id(&self) -> Option<LogId> {
        self.lock().last_log_id()
    }

    /// The log id of an entry if it is still in the log (for diagnostics and tests).
    pub fn entry_log_id(&self, index: u64) -> Option<LogId> {
        self.lock().entries.get(&index).map(|entry| *entry.get_log_id())
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// The entry of the record at the start of `bytes`, and where the next record starts.
    pub(crate) fn parse(bytes: &[u8]) -> (Entry, usize) {
        match parse_record(bytes, 0) {
            Parsed::Record { entry, next } => (*entry, next),
            Parsed::End => panic!("no record"),
            Parsed::Bad { what } => panic!("bad record: {what}"),
        }
    }

    pub(crate) fn encode(entry: &Entry, format: ClusterVersion) -> Vec<u8> {
        encode_record(entry, format)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster_model::Command;
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
            payload: EntryPayload::Normal(Command::KvSet { key: format!("k{index}"), value: "v".repeat(20) }),
        }
    }

    async fn write_entries(dir: &Path, count: u64) {
        let (mut log, _) = LogStore::open(dir).unwrap();
        log.blocking_append((1..=count).map(entry)).await.unwrap();
    }

    fn only_segment(dir: &Path) -> PathBuf {
        let mut segments: Vec<PathBuf> = fs::read_dir(dir.join("log")).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(segments.len(), 1);
        segments.pop().unwrap()
    }

    #[tokio::test]
    async fn entries_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        write_entries(dir.path(), 10).await;
        let (mut log, report) = LogStore::open(dir.path()).unwrap();
        assert_eq!(report, RecoveryReport { entries: 10, truncated_tail: None });
        assert_eq!(log.try_get_log_entries(3..5).await.unwrap(), vec![entry(3), entry(4)]);
    }

    /// End of the written data in a preallocated segment.
    fn data_end(segment: &Path) -> u64 {
        let bytes = fs::read(segment).unwrap();
        bytes.iter().rposition(|b| *b != 0).unwrap() as u64 + 1
    }

    fn write_at(segment: &Path, offset: u64, bytes: &[u8]) {
        OpenOptions::new().write(true).open(segment).unwrap().write_all_at(bytes, offset).unwrap();
    }

    #[tokio::test]
    async fn segments_are_preallocated_and_keep_their_size() {
        let dir = tempfile::tempdir().unwrap();
        write_entries(dir.path(), 10).await;
        assert_eq!(fs::metadata(only_segment(dir.path())).unwrap().len(), SEGMENT_BYTES);
    }

    #[tokio::test]
    async fn a_record_cut_short_at_the_tail_is_removed_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        write_entries(dir.path(), 10).await;
        let segment = only_segment(dir.path());
        // The last 5 bytes of the last record never reached the disk.
        write_at(&segment, data_end(&segment) - 5, &[0; 5]);
        let (mut log, report) = LogStore::open(dir.path()).unwrap();
        assert_eq!(report.entries, 9);
        let (path, _, removed) = report.truncated_tail.unwrap();
        assert_eq!(path, segment);
        assert!(removed > 0);
        assert_eq!(log.get_log_state().await.unwrap().last_log_id.unwrap().index, 9);
        // New appends continue cleanly after the cut.
        log.blocking_append([entry(10), entry(11)]).await.unwrap();
        drop(log);
        let (_, report) = LogStore::open(dir.path()).unwrap();
        assert_eq!(report, RecoveryReport { entries: 11, truncated_tail: None });
    }

    #[tokio::test]
    async fn garbage_after_the_last_record_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        write_entries(dir.path(), 4).await;
        let segment = only_segment(dir.path());
        write_at(&segment, data_end(&segment), &[0xff, 0x00, 0x13]);
        let (_, report) = LogStore::open(dir.path()).unwrap();
        assert_eq!(report.entries, 4);
        assert_eq!(report.truncated_tail.unwrap().2, 3);
    }

    #[tokio::test]
    async fn a_corrupt_record_followed_by_good_ones_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        write_entries(dir.path(), 10).await;
        let segment = only_segment(dir.path());
        let mut bytes = fs::read(&segment).unwrap();
        let record_len = data_end(&segment) as usize / 10;
        bytes[3 * record_len + 12] ^= 0x40;
        fs::write(&segment, &bytes).unwrap();
        let err = LogStore::open(dir.path()).err().expect("corruption must be refused").to_string();
        assert!(err.contains("is corrupt at offset"), "{err}");
        assert!(err.contains("checksum mismatch"), "{err}");
        assert!(err.contains(&segment.display().to_string()), "{err}");
        // Nothing was modified.
        assert_eq!(fs::read(&segment).unwrap(), bytes);
    }

    #[tokio::test]
    async fn entries_survive_a_reopen_across_segments_prepared_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let segment_bytes = 16 * 1024;
        {
            let (mut log, _) = LogStore::open_with(dir.path(), segment_bytes).unwrap();
            for batch in 0..100u64 {
                log.blocking_append((batch * 20 + 1..=batch * 20 + 20).map(entry)).await.unwrap();
                // Leave the spare thread time to prepare before the active segment fills.
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            let taken = log.spares_taken.load(std::sync::atomic::Ordering::Relaxed);
            assert!(taken >= 1, "no segment was prepared ahead of time");
        }
        let mut segments: Vec<PathBuf> = fs::read_dir(dir.path().join("log"))
            .unwrap()
            .map(|item| item.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
            .collect();
        segments.sort();
        assert!(segments.len() >= 4, "{segments:?}");
        for segment in &segments {
            assert_eq!(fs::metadata(segment).unwrap().len(), segment_bytes, "{}", segment.display());
        }
        let (mut log, report) = LogStore::open_with(dir.path(), segment_bytes).unwrap();
        assert_eq!(report, RecoveryReport { entries: 2000, truncated_tail: None });
        assert_eq!(log.try_get_log_entries(1..=2000).await.unwrap(), (1..=2000).map(entry).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_leftover_spare_segment_is_not_read_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        write_entries(dir.path(), 5).await;
        let spare = dir.path().join("log").join(crate::spare_segment::SPARE_NAME);
        // A spare cut short by a crash: garbage that must never be taken for records.
        fs::write(&spare, [0xffu8; 100]).unwrap();
        let (mut log, report) = LogStore::open(dir.path()).unwrap();
        assert_eq!(report, RecoveryReport { entries: 5, truncated_tail: None });
        assert!(!spare.exists());
        log.blocking_append([entry(6)]).await.unwrap();
        assert_eq!(log.try_get_log_entries(1..=6).await.unwrap().len(), 6);
    }

    #[tokio::test]
    async fn truncate_and_purge_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        write_entries(dir.path(), 10).await;
        let (mut log, _) = LogStore::open(dir.path()).unwrap();
        log.truncate(entry(8).log_id).await.unwrap();
        log.purge(entry(3).log_id).await.unwrap();
        drop(log);
        let (mut log, report) = LogStore::open(dir.path()).unwrap();
        assert_eq!(report.entries, 4);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.unwrap().index, 3);
        assert_eq!(state.last_log_id.unwrap().index, 7);
        assert_eq!(log.try_get_log_entries(0..100).await.unwrap(), (4..=7).map(entry).collect::<Vec<_>>());
    }

    fn record_versions(segment: &Path) -> Vec<u8> {
        let bytes = fs::read(segment).unwrap();
        let mut versions = Vec::new();
        let mut at = 0;
        while let Parsed::Record { next, .. } = parse_record(&bytes, at) {
            versions.push(bytes[at + HEADER_BYTES]);
            at = next;
        }
        versions
    }

    /// v0.1.0 reads its vote file before its log and stops on one it cannot decode: once a record
    /// of version 2 may be on disk, the vote file must be one v0.1.0 cannot decode.
    fn v0_1_reads_the_vote(dir: &Path) -> Result<Vote, postcard::Error> {
        let bytes = read_checked(&dir.join("vote")).unwrap().expect("a vote file");
        postcard::from_bytes::<Vote>(&bytes)
    }

    #[tokio::test]
    async fn at_cluster_version_1_the_log_is_written_as_v0_1_wrote_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = LogStore::open(dir.path()).unwrap();
        let vote = Vote::new_committed(3, 7);
        log.save_vote(&vote).await.unwrap();
        log.blocking_append((1..=3).map(entry)).await.unwrap();
        assert_eq!(record_versions(&only_segment(dir.path())), vec![RECORD_V0_1; 3]);
        assert_eq!(v0_1_reads_the_vote(dir.path()).unwrap(), vote);
        drop(log);
        let (log, _) = LogStore::open(dir.path()).unwrap();
        assert_eq!(log.format(), ClusterVersion::V0_1);
    }

    #[tokio::test]
    async fn raising_the_format_first_makes_the_vote_unreadable_to_v0_1_then_writes_version_2() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = LogStore::open(dir.path()).unwrap();
        let vote = Vote::new_committed(3, 7);
        log.save_vote(&vote).await.unwrap();
        log.blocking_append((1..=2).map(entry)).await.unwrap();
        log.raise_format(ClusterVersion::V0_2).await.unwrap();
        assert!(v0_1_reads_the_vote(dir.path()).is_err(), "v0.1.0 must refuse to start");
        log.blocking_append([entry(3)]).await.unwrap();
        let newer = Vote::new_committed(4, 7);
        log.save_vote(&newer).await.unwrap();
        assert!(v0_1_reads_the_vote(dir.path()).is_err(), "a later vote keeps the format");
        assert_eq!(record_versions(&only_segment(dir.path())), vec![RECORD_V0_1, RECORD_V0_1, RECORD_VERSION]);
        drop(log);
        let (mut log, report) = LogStore::open(dir.path()).unwrap();
        assert_eq!(report.entries, 3);
        assert_eq!(log.format(), ClusterVersion::V0_2);
        assert_eq!(log.read_vote().await.unwrap(), Some(newer));
        assert_eq!(log.try_get_log_entries(1..4).await.unwrap(), (1..=3).map(entry).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn an_entry_v0_1_cannot_read_raises_the_format_before_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = LogStore::open(dir.path()).unwrap();
        log.save_vote(&Vote::new_committed(1, 7)).await.unwrap();
        let newer = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), 1),
            payload: EntryPayload::Normal(Command::AlertsDelivered { next: 4 }),
        };
        log.blocking_append([newer.clone()]).await.unwrap();
        assert_eq!(log.format(), ClusterVersion::V0_2);
        assert!(v0_1_reads_the_vote(dir.path()).is_err());
        assert_eq!(record_versions(&only_segment(dir.path())), vec![RECORD_VERSION]);
        drop(log);
        let (mut log, _) = LogStore::open(dir.path()).unwrap();
        assert_eq!(log.try_get_log_entries(1..2).await.unwrap(), vec![newer]);
    }
}
