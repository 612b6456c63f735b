//! When this voter last acknowledged a leader of each term: bounds the leases older leaders granted.
//!
//! A leader grants a lease only after a quorum round that started after the renewal arrived, so
//! every lease an old leader granted began before some voter of that round acknowledged it. A new
//! leader of term `T` that learns, from a majority of voters that already know `T`, when each last
//! acknowledged a leader of a term below `T`, knows a moment after which no older lease began:
//! any old quorum and that majority share a voter. The old leader belongs to its own quorums
//! without acknowledging anything, so a leader records each of its confirmations as its own
//! acknowledgement of its term (`ConsensusNode::confirm_after`). Answers are conservative: an acknowledgement
//! still in flight counts as "now", and after a restart the process start stands in for the
//! forgotten past.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

/// Terms remembered; older ones are folded into one "before these" instant.
const KEPT_TERMS: usize = 8;

#[derive(Debug)]
struct Acks {
    /// Latest acknowledgement per term.
    by_term: BTreeMap<u64, Instant>,
    /// Latest acknowledgement of the terms dropped from `by_term` (all below its first key).
    folded: Instant,
    /// Appends being processed, by term: their acknowledgement may land at any moment.
    in_flight: BTreeMap<u64, usize>,
}

/// Per-voter record of acknowledgements, shared by the RPC handlers.
#[derive(Debug)]
pub(crate) struct AckClock {
    acks: Mutex<Acks>,
}

impl AckClock {
    /// Nothing acknowledged since `started` (the process start): earlier acknowledgements are
    /// forgotten, and bounded by it.
    pub(crate) fn new(started: Instant) -> AckClock {
        AckClock { acks: Mutex::new(Acks { by_term: BTreeMap::new(), folded: started, in_flight: BTreeMap::new() }) }
    }

    /// An append (or snapshot) of a leader of `term` is about to be processed.
    pub(crate) fn begin(&self, term: u64) {
        *self.acks.lock().expect("ack clock").in_flight.entry(term).or_default() += 1;
    }

    /// It was processed; `acknowledged_at` is set when the answer accepts that leader.
    pub(crate) fn end(&self, term: u64, acknowledged_at: Option<Instant>) {
        let mut acks = self.acks.lock().expect("ack clock");
        if let Some(count) = acks.in_flight.get_mut(&term) {
            *count -= 1;
            if *count == 0 {
                acks.in_flight.remove(&term);
            }
        }
        if let Some(at) = acknowledged_at {
            let slot = acks.by_term.entry(term).or_insert(at);
            *slot = (*slot).max(at);
            while acks.by_term.len() > KEPT_TERMS {
                let (_, oldest) = acks.by_term.pop_first().expect("non-empty");
                acks.folded = acks.folded.max(oldest);
            }
        }
    }

    /// The latest moment this voter may have acknowledged a leader of a term below `term`, or
    /// `None` if it cannot tell (the term is older than what it remembers).
    pub(crate) fn last_ack_before(&self, term: u64, now: Instant) -> Option<Instant> {
        let acks = self.acks.lock().expect("ack clock");
        if acks.in_flight.range(..term).next().is_some() {
            return Some(now);
        }
        if acks.by_term.first_key_value().is_some_and(|(first, _)| *first > term) {
            return None;
        }
        let remembered = acks.by_term.range(..term).map(|(_, at)| *at).max();
        Some(remembered.map_or(acks.folded, |at| at.max(acks.folded)))
    }
}

/// Counts the answers of a new leader's query until a majority of voters answered.
#[derive(Debug)]
pub(crate) struct AckQuorum {
    voters: usize,
    answered: usize,
    latest: Option<Instant>,
}

impl AckQuorum {
    pub(crate) fn new(voters: usize) -> AckQuorum {
        AckQuorum { voters, answered: 0, latest: None }
    }

    pub(crate) fn record(&mut self, last_ack: Instant) {
        self.answered += 1;
        self.latest = Some(self.latest.map_or(last_ack, |latest| latest.max(last_ack)));
    }

    /// The bound, once a majority answered.
    pub(crate) fn bound(&self) -> Option<Instant> {
        (self.answered * 2 > self.voters).then_some(self.latest).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn the_bound_is_the_last_ack_of_an_older_term() {
        let t0 = Instant::now();
        let clock = AckClock::new(t0);
        for (term, ms) in [(3, 100), (3, 150), (4, 300), (4, 350)] {
            clock.begin(term);
            clock.end(term, Some(at(t0, ms)));
        }
        let now = at(t0, 1000);
        assert_eq!(clock.last_ack_before(5, now), Some(at(t0, 350)));
        assert_eq!(clock.last_ack_before(4, now), Some(at(t0, 150)), "acks of term 4 itself do not count");
        assert_eq!(clock.last_ack_before(3, now), Some(t0), "nothing older than 3: the process start");
    }

    #[test]
    fn an_append_in_flight_counts_as_now() {
        let t0 = Instant::now();
        let clock = AckClock::new(t0);
        clock.begin(2);
        assert_eq!(clock.last_ack_before(3, at(t0, 500)), Some(at(t0, 500)));
        assert_eq!(clock.last_ack_before(2, at(t0, 500)), Some(t0), "an append of term 2 does not bound term 2");
        clock.end(2, None);
        assert_eq!(clock.last_ack_before(3, at(t0, 500)), Some(t0), "a refused append is no acknowledgement");
    }

    #[test]
    fn forgotten_terms_are_folded_and_too_old_questions_are_unanswered() {
        let t0 = Instant::now();
        let clock = AckClock::new(t0);
        for term in 1..=(KEPT_TERMS as u64 + 2) {
            clock.begin(term);
            clock.end(term, Some(at(t0, term * 10)));
        }
        let now = at(t0, 1000);
        assert_eq!(clock.last_ack_before(1, now), None);
        assert_eq!(clock.last_ack_before(3, now), Some(at(t0, 20)), "terms 1 and 2 were folded");
        assert_eq!(clock.last_ack_before(100, now), Some(at(t0, (KEPT_TERMS as u64 + 2) * 10)));
    }

    #[test]
    fn a_majority_is_needed_and_the_latest_answer_wins() {
        let t0 = Instant::now();
        let mut quorum = AckQuorum::new(3);
        quorum.record(at(t0, 200));
        assert_eq!(quorum.bound(), None);
        quorum.record(at(t0, 100));
        assert_eq!(quorum.bound(), Some(at(t0, 200)));
        let mut five = AckQuorum::new(5);
        five.record(at(t0, 1));
        five.record(at(t0, 2));
        assert_eq!(five.bound(), None);
    }
}
