//! Elections driven by us instead of openraft's timer: pre-vote and a fresh random timeout each round.
//!
//! openraft 0.9 has no pre-vote and draws its election timeout once per process, so two survivors
//! can split their votes round after round. We disable its timer (`enable_elect = false`) and run
//! this driver on every voter:
//!
//! ```text
//!  every tick ──> held (leadership transfer)? ──yes──> wait
//!                 │no
//!                 leader heard within a random timeout in [min, max] (redrawn every round)? ──yes──> wait
//!                 │no
//!                 PreVote to every voter ──> majority grants? ──no──> wait another random timeout
//!                 │yes
//!                 trigger openraft election (term + 1)
//! ```
//!
//! A voter grants a pre-vote only if it has not heard from a leader for `election_timeout_min` and
//! the candidate's log is at least as up to date as its own. A node cut off from the cluster thus
//! never raises its term, and cannot depose a healthy leader when it comes back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::types::LogId;

/// Asked by a would-be candidate before it starts a real election.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PreVoteRequest {
    pub(crate) candidate: u64,
    pub(crate) last_log_id: Option<LogId>,
}

/// A voter's answer to [`PreVoteRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PreVoteResponse {
    pub(crate) granted: bool,
    pub(crate) reason: String,
}

/// What a voter knows when it answers a pre-vote.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VoterView {
    pub(crate) last_log_id: Option<LogId>,
    pub(crate) since_leader_contact: Duration,
    pub(crate) leader_with_quorum: bool,
}

/// The pre-vote rule, a pure function of the voter's view.
pub(crate) fn decide_pre_vote(
    voter: VoterView,
    request: &PreVoteRequest,
    election_timeout_min: Duration,
) -> PreVoteResponse {
    let refuse = |reason: String| PreVoteResponse { granted: false, reason };
    if voter.leader_with_quorum {
        return refuse("i am a leader with a quorum".into());
    }
    if voter.since_leader_contact < election_timeout_min {
        return refuse(format!("heard from the leader {} ms ago", voter.since_leader_contact.as_millis()));
    }
    if request.last_log_id < voter.last_log_id {
        return refuse(format!("candidate log {:?} is behind mine {:?}", request.last_log_id, voter.last_log_id));
    }
    PreVoteResponse { granted: true, reason: String::new() }
}

/// Counts pre-vote answers; the candidate counts itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PreVoteTally {
    voters: usize,
    pub(crate) granted: usize,
    refused: usize,
}

impl PreVoteTally {
    pub(crate) fn new(voters: usize) -> PreVoteTally {
        PreVoteTally { voters, granted: 1, refused: 0 }
    }

    /// An answer (a voter that did not answer in time counts as refusing).
    pub(crate) fn record(&mut self, granted: bool) {
        if granted {
            self.granted += 1;
        } else {
            self.refused += 1;
        }
    }

    /// `Some(true)` once a majority granted, `Some(false)` once a majority can no longer grant.
    pub(crate) fn outcome(&self) -> Option<bool> {
        if self.granted * 2 > self.voters {
            Some(true)
        } else if (self.voters - self.refused) * 2 <= self.voters {
            Some(false)
        } else {
            None
        }
    }
}

/// A won pre-vote round is stale if, while it ran, this node heard from a leader (or granted a
/// vote), or its term moved: the grants were given before that leader existed, and acting on them
/// would depose it.
pub(crate) fn round_is_stale(round_age: Duration, since_contact: Duration, term_before: u64, term_now: u64) -> bool {
    since_contact < round_age || term_now != term_before
}

/// Times the driver works from, shared with the RPC handlers.
pub(crate) struct ElectionClock {
    /// Last time a leader (or this node's own candidacy) showed signs of life.
    last_leader_contact: Mutex<Instant>,
    /// Elections are held off until then (leadership transfer).
    hold_until: Mutex<Option<Instant>>,
}

impl ElectionClock {
    pub(crate) fn new() -> ElectionClock {
        ElectionClock { last_leader_contact: Mutex::new(Instant::now()), hold_until: Mutex::new(None) }
    }

    pub(crate) fn leader_contact(&self) {
        *self.last_leader_contact.lock().expect("election clock") = Instant::now();
    }

    pub(crate) fn since_leader_contact(&self) -> Duration {
        self.last_leader_contact.lock().expect("election clock").elapsed()
    }

    pub(crate) fn hold(&self, duration: Duration) {
        *self.hold_until.lock().expect("election clock") =
            if duration.is_zero() { None } else { Some(Instant::now() + duration) };
    }

    pub(crate) fn held(&self) -> bool {
        self.hold_until.lock().expect("election clock").is_some_and(|until| Instant::now() < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn log_id(term: u64, index: u64) -> Option<LogId> {
        Some(LogId::new(CommittedLeaderId::new(term, 0), index))
    }

    fn view(last: Option<LogId>, since_ms: u64, leader: bool) -> VoterView {
        VoterView {
            last_log_id: last,
            since_leader_contact: Duration::from_millis(since_ms),
            leader_with_quorum: leader,
        }
    }

    const MIN: Duration = Duration::from_millis(150);

    #[test]
    fn a_voter_that_hears_its_leader_refuses() {
        let request = PreVoteRequest { candidate: 2, last_log_id: log_id(3, 10) };
        assert!(!decide_pre_vote(view(log_id(3, 10), 20, false), &request, MIN).granted);
        assert!(!decide_pre_vote(view(log_id(3, 10), 1000, true), &request, MIN).granted);
        assert!(decide_pre_vote(view(log_id(3, 10), 1000, false), &request, MIN).granted);
    }

    #[test]
    fn a_candidate_with_a_shorter_or_older_log_is_refused() {
        let shorter = PreVoteRequest { candidate: 2, last_log_id: log_id(3, 9) };
        let older_term = PreVoteRequest { candidate: 2, last_log_id: log_id(2, 50) };
        assert!(!decide_pre_vote(view(log_id(3, 10), 1000, false), &shorter, MIN).granted);
        assert!(!decide_pre_vote(view(log_id(3, 10), 1000, false), &older_term, MIN).granted);
        let newer = PreVoteRequest { candidate: 2, last_log_id: log_id(4, 1) };
        assert!(decide_pre_vote(view(log_id(3, 10), 1000, false), &newer, MIN).granted);
    }

    #[test]
    fn a_round_ends_as_soon_as_its_outcome_is_known() {
        let mut three = PreVoteTally::new(3);
        assert_eq!(three.outcome(), None);
        three.record(true);
        assert_eq!(three.outcome(), Some(true), "self + one of three is a majority: no wait for the third");
        let mut three = PreVoteTally::new(3);
        three.record(false);
        assert_eq!(three.outcome(), None);
        three.record(false);
        assert_eq!(three.outcome(), Some(false));
        let mut five = PreVoteTally::new(5);
        five.record(true);
        five.record(false);
        five.record(false);
        assert_eq!(five.outcome(), None);
        five.record(false);
        assert_eq!(five.outcome(), Some(false));
        assert_eq!(PreVoteTally::new(1).outcome(), Some(true));
        assert_eq!(PreVoteTally::new(2).outcome(), None);
    }

    #[test]
    fn a_round_overtaken_by_a_leader_is_stale() {
        let ms = Duration::from_millis;
        // Leader contact 50 ms ago, during a round that started 200 ms ago.
        assert!(round_is_stale(ms(200), ms(50), 3, 3));
        // The term moved during the round (a vote was granted to someone else).
        assert!(round_is_stale(ms(200), ms(900), 3, 4));
        // Nothing happened since the round started.
        assert!(!round_is_stale(ms(200), ms(900), 3, 3));
    }

    #[test]
    fn hold_expires_and_can_be_released() {
        let clock = ElectionClock::new();
        clock.hold(Duration::from_secs(60));
        assert!(clock.held());
        clock.hold(Duration::ZERO);
        assert!(!clock.held());
    }
}
