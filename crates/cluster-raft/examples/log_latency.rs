//! Measures the durable append latency of the Raft log (one `fdatasync` per append).
//!
//! `cargo run --release -p cluster-raft --example log_latency -- [DIR] [COUNT]`; DIR must be on the
//! disk that will hold `data_dir` (default: a temporary directory under /var/tmp).

use std::time::Instant;

use cluster_model::Command;
use cluster_raft::LogStore;
use openraft::storage::RaftLogStorageExt;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let base = args.next().unwrap_or_else(|| "/var/tmp".into());
    let count: u64 = args.next().and_then(|c| c.parse().ok()).unwrap_or(2000);
    let dir = tempfile::tempdir_in(&base).expect("temp dir");
    let (mut log, _) = LogStore::open(dir.path()).expect("open log");
    let entry = |index: u64| Entry::<cluster_raft::TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
        payload: EntryPayload::Normal(Command::KvSet { key: format!("key/{index}"), value: "v".repeat(100) }),
    };
    for (label, batch) in [("1 entry", 1u64), ("64 entries", 64)] {
        let mut latencies = Vec::new();
        let mut next = latencies.len() as u64 + 1 + count * 64 * u64::from(batch == 64);
        for _ in 0..count / batch.min(8) {
            let started = Instant::now();
            log.blocking_append((next..next + batch).map(entry)).await.expect("append");
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            next += batch;
        }
        latencies.sort_by(f64::total_cmp);
        println!(
            "append of {label}: p50 {:.3} ms, p99 {:.3} ms over {} appends ({})",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.len(),
            base
        );
    }
}
