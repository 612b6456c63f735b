//! The leader's record of which voters accepted its appends, by send time: a quorum confirmation
//! without a round of its own.
//!
//! A lease grant needs proof that this node still led *after* the renewal arrived: a majority of
//! voters accepting a message of this term that was sent after that moment. Every append the
//! leader sends (its heartbeats every 50 ms included) is such a message once accepted, so a grant
//! waits for the next heartbeats instead of sending a round of RPCs per renewal.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Acks {
    term: u64,
    /// Per voter: the latest send time of an append of `term` it accepted.
    sent: HashMap<u64, Instant>,
}

/// Shared by the replication streams (writers) and lease grants (readers).
#[derive(Debug, Default)]
pub(crate) struct LeaderClock {
    acks: Mutex<Acks>,
    changed: Notify,
}

impl LeaderClock {
    /// `target` accepted an append of `term` that was sent at `sent`. Waiters are woken only for a
    /// voter (`voter`): a learner's acceptance confirms nothing, and at 45 learners waking every
    /// pending lease grant for each of their appends cost the leader more than the appends.
    pub(crate) fn accepted(&self, term: u64, target: u64, sent: Instant, voter: bool) {
        let mut acks = self.acks.lock().expect("leader clock");
        if term > acks.term {
            acks.term = term;
            acks.sent.clear();
        }
        if term == acks.term {
            let slot = acks.sent.entry(target).or_insert(sent);
            *slot = (*slot).max(sent);
        }
        drop(acks);
        if voter {
            self.changed.notify_waiters();
        }
    }

    /// Whether, in every configuration of `configs` (two during a joint membership change), a
    /// majority of voters accepted an append of `term` sent at or after `since`; `me` (the leader)
    /// counts as accepting.
    pub(crate) fn confirmed(&self, term: u64, me: u64, configs: &[BTreeSet<u64>], since: Instant) -> bool {
        let acks = self.acks.lock().expect("leader clock");
        let accepted = |voter: &u64| {
            *voter == me || (acks.term == term && acks.sent.get(voter).is_some_and(|sent| *sent >= since))
        };
        !configs.is_empty()
            && configs.iter().all(|voters| voters.iter().filter(|v| accepted(v)).count() * 2 > voters.len())
    }

    /// The targets (voters and learners) that accepted an append of `term`.
    pub(crate) fn accepted_in(&self, term: u64) -> Vec<u64> {
        let acks = self.acks.lock().expect("leader clock");
        if acks.term == term {
            acks.sent.keys().copied().collect()
        } else {
            Vec::new()
        }
    }

    /// Resolves at the next acceptance (register before checking, then await).
    pub(crate) fn changed(&self) -> &Notify {
        &self.changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_majority_must_accept_an_append_sent_after_the_moment() {
        let clock = LeaderClock::default();
        let t0 = Instant::now();
        let since = t0 + Duration::from_millis(10);
        let voters = [set(&[1, 2, 3])];
        assert!(!clock.confirmed(5, 1, &voters, since));
        clock.accepted(5, 2, t0, true);
        assert!(!clock.confirmed(5, 1, &voters, since), "sent before the moment");
        clock.accepted(5, 3, since + Duration::from_millis(5), true);
        assert!(clock.confirmed(5, 1, &voters, since));
        assert!(!clock.confirmed(6, 1, &voters, since), "acceptances of another term do not count");
    }

    #[test]
    fn a_newer_term_forgets_the_older_one_and_joint_configs_need_both_majorities() {
        let clock = LeaderClock::default();
        let t0 = Instant::now();
        clock.accepted(5, 2, t0, true);
        clock.accepted(6, 3, t0, true);
        clock.accepted(5, 4, t0, true);
        assert!(!clock.confirmed(5, 1, &[set(&[1, 2, 4])], t0), "term 5 was forgotten");
        assert!(clock.confirmed(6, 1, &[set(&[1, 2, 3])], t0));
        assert!(!clock.confirmed(6, 1, &[set(&[1, 2, 3]), set(&[4, 5, 6])], t0));
        clock.accepted(6, 4, t0, true);
        clock.accepted(6, 5, t0, true);
        assert!(clock.confirmed(6, 1, &[set(&[1, 2, 3]), set(&[4, 5, 6])], t0));
        assert!(clock.confirmed(6, 1, &[set(&[1])], t0), "a single voter confirms itself");
        let mut accepted = clock.accepted_in(6);
        accepted.sort_unstable();
        assert_eq!(accepted, vec![3, 4, 5]);
        assert!(clock.accepted_in(5).is_empty(), "term 5 was forgotten");
    }
}
