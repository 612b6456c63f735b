//! The proposer: concurrent writes share one Raft entry, hence one log append, one `fdatasync`
//! and one replication round.
//!
//! openraft 0.9 appends every `client_write` as its own entry, and its core waits for each append
//! to be durable before it looks at the next message: one `fdatasync` per write on the leader,
//! whatever the log's group commit could do (measured: exactly one append per flush at 64 clients,
//! the core idle between fsyncs). So writes queue here instead, and one task hands them over:
//!
//! ```text
//!  write() ──(command, reply)──> queue ──> proposer task:
//!     take everything queued (≤ MAX_BATCH_COMMANDS, ≤ MAX_BATCH_BYTES; one at a time while the
//!     cluster version is 0.1.0, whose nodes cannot decode a batch), drop the abandoned ones
//!     one command  -> client_write_ff(command)                  (the entry a lone write always had)
//!     several      -> client_write_ff(Command::Batch(commands)) (applied in order, one outcome each)
//!     a task awaits the entry's outcome and answers every caller
//!     wait until the log completed the append after this hand-over (the core is free again),
//!       the outcome arrived, or one heartbeat passed; meanwhile the next batch fills up
//! ```
//!
//! Nothing changes for correctness: each command is applied exactly as its own entry would be,
//! in queue order, and a caller is answered only after the entry is committed and applied. A
//! caller that gave up (its request timed out) before its command was handed over is dropped
//! from the batch; after the hand-over its outcome is unknown, as with a direct `client_write`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster_model::{ClusterVersion, Command, CommandOutcome, NodeInfo};
use openraft::error::{ClientWriteError, Fatal, RaftError};
use tokio::sync::{mpsc, oneshot};

use crate::compat::SharedVersion;
use crate::log_store::AppendProgress;
use crate::types::Raft;

/// Most commands in one batch.
const MAX_BATCH_COMMANDS: usize = 1024;
/// Most encoded bytes of the commands of one batch (a larger single command goes alone). With
/// openraft's `max_payload_entries` (300) this keeps an append request well below the 16 MiB
/// frame limit.
const MAX_BATCH_BYTES: usize = 32 * 1024;

/// Why a proposal failed, as openraft reports it.
pub(crate) type ProposeError = RaftError<u64, ClientWriteError<u64, NodeInfo>>;

type Reply = oneshot::Sender<Result<CommandOutcome, ProposeError>>;

struct Proposal {
    command: Command,
    bytes: usize,
    reply: Reply,
    queued_at: Instant,
}

/// The queue of the proposer task (see the module documentation).
pub(crate) struct Proposer {
    queue: mpsc::UnboundedSender<Proposal>,
}

impl Proposer {
    /// Starts the proposer task of `raft`; `heartbeat` bounds how long a batch waits for the
    /// previous append.
    pub(crate) fn start(
        raft: Raft,
        progress: Arc<AppendProgress>,
        heartbeat: Duration,
        version: SharedVersion,
    ) -> Proposer {
        let (queue, proposals) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, progress, heartbeat, version, proposals));
        Proposer { queue }
    }

    /// Proposes `command` and waits until it is committed and applied; its outcome.
    pub(crate) async fn propose(&self, command: Command) -> Result<CommandOutcome, ProposeError> {
        let bytes = encoded_size(&command);
        let (reply, answer) = oneshot::channel();
        if self.queue.send(Proposal { command, bytes, reply, queued_at: Instant::now() }).is_err() {
            return Err(RaftError::Fatal(Fatal::Stopped));
        }
        answer.await.unwrap_or(Err(RaftError::Fatal(Fatal::Stopped)))
    }
}

fn encoded_size(command: &Command) -> usize {
    postcard::serialize_with_flavor(command, postcard::ser_flavors::Size::default()).unwrap_or(usize::MAX)
}

/// Takes the next batch off the queue: everything waiting, within the limits; what does not fit
/// stays in `carry` for the next batch. `None` once every sender is gone.
async fn next_batch(
    proposals: &mut mpsc::UnboundedReceiver<Proposal>,
    carry: &mut Option<Proposal>,
    max_commands: usize,
) -> Option<Vec<Proposal>> {
    let first = match carry.take() {
        Some(proposal) => proposal,
        None => proposals.recv().await?,
    };
    let mut bytes = first.bytes;
    let mut batch = vec![first];
    while batch.len() < max_commands {
        let Ok(proposal) = proposals.try_recv() else { break };
        if bytes.saturating_add(proposal.bytes) > MAX_BATCH_BYTES {
            *carry = Some(proposal);
            break;
        }
        bytes += proposal.bytes;
        batch.push(proposal);
    }
    Some(batch)
}

async fn run(
    raft: Raft,
    progress: Arc<AppendProgress>,
    heartbeat: Duration,
    version: SharedVersion,
    mut proposals: mpsc::UnboundedReceiver<Proposal>,
) {
    let mut carry = None;
    let mut completed = progress.completed();
    let stats = Arc::new(Mutex::new(Stats::default()));
    loop {
        // `Command::Batch` needs cluster version 0.2.0: below it every command is its own entry.
        let max_commands = if version.get() >= ClusterVersion::V0_2 { MAX_BATCH_COMMANDS } else { 1 };
        let Some(mut batch) = next_batch(&mut proposals, &mut carry, max_commands).await else { break };
        // A caller that gave up must not have its command applied later.
        batch.retain(|proposal| !proposal.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let handed_over = Instant::now();
        stats.lock().expect("proposer stats lock").handed_over(&batch, handed_over);
        let appends_before = progress.received();
        let (commands, replies): (Vec<Command>, Vec<Reply>) =
            batch.into_iter().map(|proposal| (proposal.command, proposal.reply)).unzip();
        let entry = match <[Command; 1]>::try_from(commands) {
            Ok([command]) => command,
            Err(commands) => Command::Batch(commands),
        };
        let answer = match raft.client_write_ff(entry).await {
            Ok(answer) => answer,
            Err(fatal) => {
                for reply in replies {
                    let _ = reply.send(Err(RaftError::Fatal(fatal.clone())));
                }
                continue;
            }
        };
        let (answered, mut outcome_arrived) = oneshot::channel::<()>();
        let committed_stats = stats.clone();
        tokio::spawn(async move {
            // A dropped responder means the core stopped (as openraft's own `client_write` says).
            let result = match answer.await {
                Ok(Ok(response)) => Ok(response.data),
                Ok(Err(err)) => Err(RaftError::APIError(err)),
                Err(_) => Err(RaftError::Fatal(Fatal::Stopped)),
            };
            let _ = answered.send(());
            committed_stats.lock().expect("proposer stats lock").committed(handed_over.elapsed());
            distribute(result, replies);
        });
        // The core appends this entry next and is busy until it is durable: wait for that, so that
        // what arrives meanwhile goes into the next batch instead of an entry of its own.
        let appended = completed.wait_for(|completed| *completed > appends_before);
        let gate = tokio::select! {
            _ = appended => Gate::Appended,
            _ = &mut outcome_arrived => Gate::Answered,
            _ = tokio::time::sleep(heartbeat) => Gate::Timeout,
        };
        stats.lock().expect("proposer stats lock").gate_opened(gate, handed_over.elapsed());
    }
}

/// Why the proposer handed over its next batch.
#[derive(Clone, Copy)]
enum Gate {
    /// The log completed the append after the previous hand-over.
    Appended,
    /// The previous entry's outcome arrived (typically: not the leader).
    Answered,
    /// One heartbeat passed.
    Timeout,
}

/// What the proposer did, logged at debug level every [`Stats::PERIOD`]: batches and their size,
/// how long commands waited in the queue, how long until the log completed the append after a
/// hand-over, and until the entry was committed and applied.
#[derive(Default)]
struct Stats {
    since: Option<Instant>,
    batches: u64,
    commands: u64,
    max_commands: u64,
    queued: Duration,
    appended: Duration,
    committed: Duration,
    committed_count: u64,
    gates: [u64; 3],
}

impl Stats {
    const PERIOD: Duration = Duration::from_secs(5);

    fn handed_over(&mut self, batch: &[Proposal], now: Instant) {
        self.batches += 1;
        self.commands += batch.len() as u64;
        self.max_commands = self.max_commands.max(batch.len() as u64);
        self.queued += batch.iter().map(|proposal| now.saturating_duration_since(proposal.queued_at)).sum::<Duration>();
    }

    fn committed(&mut self, took: Duration) {
        self.committed += took;
        self.committed_count += 1;
    }

    fn gate_opened(&mut self, gate: Gate, took: Duration) {
        self.appended += took;
        self.gates[gate as usize] += 1;
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);
        if now.duration_since(since) < Self::PERIOD {
            return;
        }
        let per = |total: Duration, count: u64| total.as_micros() as u64 / count.max(1);
        tracing::debug!(
            secs = now.duration_since(since).as_secs_f64(),
            batches = self.batches,
            commands = self.commands,
            commands_per_batch = self.commands as f64 / self.batches.max(1) as f64,
            max_commands_per_batch = self.max_commands,
            queued_mean_us = per(self.queued, self.commands),
            hand_over_to_gate_mean_us = per(self.appended, self.batches),
            hand_over_to_applied_mean_us = per(self.committed, self.committed_count),
            gate_appended = self.gates[Gate::Appended as usize],
            gate_answered = self.gates[Gate::Answered as usize],
            gate_timeout = self.gates[Gate::Timeout as usize],
            "raft proposer"
        );
        *self = Stats { since: Some(now), ..Stats::default() };
    }
}

/// Answers the callers of one entry: a batch's outcomes go one to each caller, in order.
fn distribute(result: Result<CommandOutcome, ProposeError>, replies: Vec<Reply>) {
    match result {
        Ok(CommandOutcome::Batch(outcomes)) if replies.len() > 1 && outcomes.len() == replies.len() => {
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Ok(outcome) if replies.len() == 1 => {
            let _ = replies.into_iter().next().expect("one reply").send(Ok(outcome));
        }
        Ok(outcome) => {
            // Cannot happen: a batch of n commands applies to n outcomes.
            tracing::error!(?outcome, callers = replies.len(), "a batch's outcome does not match its commands");
            for reply in replies {
                let _ = reply.send(Err(RaftError::Fatal(Fatal::Panicked)));
            }
        }
        Err(err) => {
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }
}
