//! What of openraft's logging the daemon leaves out: its lines for each failed attempt to reach a
//! peer that does not answer.
//!
//! openraft logs four warnings and errors for every failed append to an unreachable peer, and one
//! more for its back-off: with the retry every 100 ms (cluster-raft's `unreachable_backoff`) a
//! stopped node cost 50 lines a second in every other node's journal, then 10 a second for as long
//! as it stayed down. cluster-raft logs the change instead (the peer stops answering, still does
//! not answer every minute, answers again: `network::Reachability`).

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// The modules of openraft whose per-attempt lines are left out.
const REPLICATION_TARGETS: [&str; 2] = ["openraft::replication", "openraft::engine::handler::replication_handler"];

/// What those lines say when the peer could not be reached (cluster-raft's `Unreachable` error),
/// and openraft's line for its back-off, which follows only that error.
const UNREACHABLE_MARKS: [&str; 2] = ["Unreachable node", "backoff mode: drain events"];

/// A layer that disables openraft's per-attempt lines about an unreachable peer, for every other
/// layer of the subscriber.
pub(crate) struct QuietUnreachable;

impl<S: Subscriber> Layer<S> for QuietUnreachable {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let metadata = event.metadata();
        if *metadata.level() > Level::WARN || !REPLICATION_TARGETS.iter().any(|target| metadata.target() == *target) {
            return true;
        }
        let mut text = FieldText::default();
        event.record(&mut text);
        !UNREACHABLE_MARKS.iter().any(|mark| text.0.contains(mark))
    }
}

/// Every field of an event as text.
#[derive(Default)]
struct FieldText(String);

impl Visit for FieldText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, "{}={} ", field.name(), value);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::prelude::*;

    use super::*;

    /// Collects the messages of the events it sees.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Seen {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            let mut text = FieldText::default();
            event.record(&mut text);
            self.0.lock().unwrap().push(text.0);
        }
    }

    #[test]
    fn openraft_lines_about_an_unreachable_peer_are_left_out_and_nothing_else() {
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry().with(seen.clone()).with(QuietUnreachable);
        tracing::subscriber::with_default(subscriber, || {
            let unreachable = "Unreachable node: cannot connect to clusterd at 192.0.2.13:7400: Connection refused";
            tracing::error!(target: "openraft::replication", err = %unreachable, "RPCError");
            tracing::warn!(target: "openraft::replication", "backoff mode: drain events without processing them");
            tracing::warn!(
                target: "openraft::engine::handler::replication_handler",
                "heartbeat error: {unreachable}, no update to inflight data"
            );
            // Kept: another error of the same module, the same words from elsewhere, and a peer
            // that answered wrongly rather than not at all.
            tracing::error!(target: "openraft::replication", error = "disk full", "error replication to target=3");
            tracing::warn!(target: "cluster_raft::network", "peer n3: Unreachable node");
            tracing::error!(target: "openraft::replication", err = "NetworkError: connection reset", "RPCError");
        });
        let seen = seen.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "{seen:#?}");
        assert!(seen[0].contains("disk full"), "{seen:#?}");
        assert!(seen[1].contains("peer n3"), "{seen:#?}");
        assert!(seen[2].contains("connection reset"), "{seen:#?}");
    }
}
