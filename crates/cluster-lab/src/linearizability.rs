//! Linearizability of key-value histories: a Wing–Gong search with Lowe's memoization (as in Knossos and
//! Porcupine), run per key (a key-value map is linearizable iff each key's register is: P-compositionality).
//!
//! ```text
//!   history of one key ──▶ sort by invoke ──▶ DFS over "which pending op takes effect next"
//!                                           (an op may go next only if no unlinearized op completed
//!                                            before it was invoked), memo (linearized set, value)
//!                          ◀── Ok (an order exists) | Violation (longest prefix, what could not follow)
//! ```
//!
//! Operations whose outcome is unknown (a client timed out, the connection broke) may have taken effect at any
//! time after their invocation, or never: they never block others and need not be placed. Reads with an
//! unknown outcome are dropped. Pure code, no I/O.
//!
//! stateright's `LinearizabilityTester` (in the workspace dependencies) was not used: it takes histories through
//! per-thread `on_invoke`/`on_return` calls and enumerates interleavings without memoization, whereas nemesis
//! histories have timed-out operations and hundreds of operations per key.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// A client call on one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Call {
    /// `kv set KEY VALUE`.
    Set(String),
    /// `kv get KEY`.
    Get,
    /// `kv cas KEY EXPECTED NEW`; `expected: None` is `--absent`.
    Cas {
        /// The value the key must have (or absent).
        expected: Option<String>,
        /// The new value.
        new: String,
    },
    /// `kv del KEY`.
    Del,
}

/// What the client saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Success (set, del, cas applied).
    Ok,
    /// A read's result (`None`: key not found).
    Value(Option<String>),
    /// A cas that found another value.
    CasMismatch,
    /// A del (or other call) that found no key.
    NotFound,
    /// Timed out or failed: may or may not have taken effect.
    Unknown,
}

/// One operation of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Client (process) id; informational.
    pub client: u64,
    /// The key.
    pub key: String,
    /// The call.
    pub call: Call,
    /// What came back.
    pub outcome: Outcome,
    /// Invocation time (ns, monotonic).
    pub invoke_ns: u64,
    /// Completion time (ns, monotonic); ignored for unknown outcomes.
    pub complete_ns: u64,
}

/// The verdict for one key.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum KeyVerdict {
    /// A linearization exists.
    Linearizable,
    /// No linearization exists.
    Violation {
        /// Operations (indices into the key's history sorted by invocation) of the longest linearizable prefix.
        longest_prefix: Vec<usize>,
        /// Operations that could have come next and were each impossible.
        stuck_on: Vec<Operation>,
    },
    /// The search exceeded its budget.
    Inconclusive {
        /// States explored.
        explored: usize,
    },
}

/// Verdicts for a whole history.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Per key.
    pub keys: BTreeMap<String, KeyVerdict>,
    /// Operations checked (unknown reads excluded).
    pub operations: usize,
}

impl Report {
    /// True when every key is linearizable.
    pub fn passed(&self) -> bool {
        self.keys.values().all(|verdict| *verdict == KeyVerdict::Linearizable)
    }

    /// Keys that are not linearizable (or undecided).
    pub fn failures(&self) -> Vec<(&String, &KeyVerdict)> {
        self.keys.iter().filter(|(_, verdict)| **verdict != KeyVerdict::Linearizable).collect()
    }
}

/// Explored-state budget per key.
pub const DEFAULT_BUDGET: usize = 2_000_000;

/// Checks a whole history, key by key.
pub fn check(history: &[Operation]) -> Report {
    let mut by_key: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    for operation in history {
        if operation.call == Call::Get && operation.outcome == Outcome::Unknown {
            continue;
        }
        by_key.entry(&operation.key).or_default().push(operation.clone());
    }
    let mut report = Report::default();
    for (key, operations) in by_key {
        report.operations += operations.len();
        report.keys.insert(key.to_string(), check_key(&operations, DEFAULT_BUDGET));
    }
    report
}

type Value = Option<u32>;

/// Applies an operation to the register; `None` when the recorded outcome is impossible in `state`.
fn step(call: &InternedCall, outcome: &Outcome, state: Value, read: Option<Value>) -> Option<Value> {
    match (call, outcome) {
        (InternedCall::Set(value), Outcome::Ok | Outcome::Unknown) => Some(Some(*value)),
        (InternedCall::Get, Outcome::Value(_)) => (read == Some(state)).then_some(state),
        (InternedCall::Cas { expected, new }, Outcome::Ok) => (state == *expected).then_some(Some(*new)),
        (InternedCall::Cas { expected, .. }, Outcome::CasMismatch) => (state != *expected).then_some(state),
        (InternedCall::Cas { expected, new }, Outcome::Unknown) => {
            Some(if state == *expected { Some(*new) } else { state })
        }
        (InternedCall::Del, Outcome::Ok | Outcome::Unknown) => Some(None),
        (InternedCall::Del, Outcome::NotFound) => state.is_none().then_some(None),
        (InternedCall::Get, Outcome::NotFound) => state.is_none().then_some(state),
        _ => None,
    }
}

enum InternedCall {
    Set(u32),
    Get,
    Cas { expected: Value, new: u32 },
    Del,
}

struct Frame {
    linearized: Vec<u64>,
    state: Value,
    order: Vec<usize>,
    candidates: Vec<usize>,
    next: usize,
}

fn bit(set: &[u64], index: usize) -> bool {
    set[index / 64] & (1 << (index % 64)) != 0
}

/// Checks the operations of one key (any order) with a budget of explored states.
///
/// Unknown writes whose value no completed operation ever observed are first left out (each one would double
/// the search space, and taking effect could only hide a value nobody saw); if that finds a violation, the full
/// history is searched before reporting it, so pruning never produces a false violation.
pub fn check_key(operations: &[Operation], budget: usize) -> KeyVerdict {
    let observed: HashSet<&str> = operations
        .iter()
        .filter(|operation| operation.outcome != Outcome::Unknown)
        .flat_map(|operation| {
            let read = match &operation.outcome {
                Outcome::Value(Some(value)) => Some(value.as_str()),
                _ => None,
            };
            let expected = match &operation.call {
                Call::Cas { expected: Some(value), .. } => Some(value.as_str()),
                _ => None,
            };
            read.into_iter().chain(expected)
        })
        .collect();
    let pruned: Vec<Operation> = operations
        .iter()
        .filter(|operation| {
            let written = match &operation.call {
                Call::Set(value) | Call::Cas { new: value, .. } => Some(value.as_str()),
                _ => None,
            };
            !(operation.outcome == Outcome::Unknown && written.is_some_and(|value| !observed.contains(value)))
        })
        .cloned()
        .collect();
    let verdict = search(&pruned, budget);
    if pruned.len() == operations.len() || verdict == KeyVerdict::Linearizable {
        return verdict;
    }
    search(operations, budget)
}

fn search(operations: &[Operation], budget: usize) -> KeyVerdict {
    let mut operations = operations.to_vec();
    operations.sort_by_key(|operation| operation.invoke_ns);
    let mut names: HashMap<String, u32> = HashMap::new();
    let mut intern = |value: &str| -> u32 {
        let next = names.len() as u32;
        *names.entry(value.to_string()).or_insert(next)
    };
    let calls: Vec<InternedCall> = operations
        .iter()
        .map(|operation| match &operation.call {
            Call::Set(value) => InternedCall::Set(intern(value)),
            Call::Get => InternedCall::Get,
            Call::Cas { expected, new } => {
                InternedCall::Cas { expected: expected.as_deref().map(&mut intern), new: intern(new) }
            }
            Call::Del => InternedCall::Del,
        })
        .collect();
    let reads: Vec<Option<Value>> = operations
        .iter()
        .map(|operation| match &operation.outcome {
            Outcome::Value(value) => Some(value.as_deref().map(&mut intern)),
            _ => None,
        })
        .collect();
    let complete: Vec<u64> = operations
        .iter()
        .map(|operation| if operation.outcome == Outcome::Unknown { u64::MAX } else { operation.complete_ns })
        .collect();
    let required = operations.iter().filter(|operation| operation.outcome != Outcome::Unknown).count();
    let count = operations.len();
    let words = count.div_ceil(64).max(1);

    let candidates_of = |linearized: &[u64]| -> Vec<usize> {
        let horizon =
            (0..count).filter(|index| !bit(linearized, *index)).map(|index| complete[index]).min().unwrap_or(u64::MAX);
        (0..count).filter(|index| !bit(linearized, *index) && operations[*index].invoke_ns <= horizon).collect()
    };
    let done = |order: &[usize]| order.iter().filter(|index| complete[**index] != u64::MAX).count() == required;

    let mut seen: HashSet<(Vec<u64>, Value)> = HashSet::new();
    let root = vec![0u64; words];
    let mut stack =
        vec![Frame { candidates: candidates_of(&root), linearized: root, state: None, order: Vec::new(), next: 0 }];
    if done(&[]) {
        return KeyVerdict::Linearizable;
    }
    let mut best: (usize, Vec<usize>, Vec<usize>) = (0, Vec::new(), stack[0].candidates.clone());
    let mut explored = 0usize;
    while let Some(frame) = stack.last_mut() {
        if frame.next >= frame.candidates.len() {
            stack.pop();
            continue;
        }
        let index = frame.candidates[frame.next];
        frame.next += 1;
        let Some(state) = step(&calls[index], &operations[index].outcome, frame.state, reads[index]) else {
            continue;
        };
        let mut linearized = frame.linearized.clone();
        linearized[index / 64] |= 1 << (index % 64);
        if !seen.insert((linearized.clone(), state)) {
            continue;
        }
        explored += 1;
        if explored > budget {
            return KeyVerdict::Inconclusive { explored };
        }
        let mut order = frame.order.clone();
        order.push(index);
        if done(&order) {
            return KeyVerdict::Linearizable;
        }
        let candidates = candidates_of(&linearized);
        let placed = order.iter().filter(|index| complete[**index] != u64::MAX).count();
        if placed > best.0 {
            best = (placed, order.clone(), candidates.clone());
        }
        stack.push(Frame { linearized, state, order, candidates, next: 0 });
    }
    KeyVerdict::Violation {
        longest_prefix: best.1,
        stuck_on: best.2.iter().map(|index| operations[*index].clone()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u64, call: Call, outcome: Outcome, invoke: u64, complete: u64) -> Operation {
        Operation { client, key: "k".into(), call, outcome, invoke_ns: invoke, complete_ns: complete }
    }

    fn set(value: &str) -> Call {
        Call::Set(value.into())
    }

    fn read(value: Option<&str>) -> Outcome {
        Outcome::Value(value.map(String::from))
    }

    #[test]
    fn accepts_concurrent_writes_read_in_either_order() {
        let history = vec![
            op(1, set("a"), Outcome::Ok, 0, 10),
            op(2, set("b"), Outcome::Ok, 1, 11),
            op(3, Call::Get, read(Some("a")), 12, 13),
            op(3, Call::Get, read(Some("a")), 14, 15),
        ];
        assert_eq!(check_key(&history, DEFAULT_BUDGET), KeyVerdict::Linearizable);
    }

    #[test]
    fn rejects_a_stale_read_after_a_completed_write() {
        // set a; then set b completes; a later read returns a: impossible.
        let history = vec![
            op(1, set("a"), Outcome::Ok, 0, 10),
            op(1, set("b"), Outcome::Ok, 20, 30),
            op(2, Call::Get, read(Some("a")), 40, 50),
        ];
        let verdict = check_key(&history, DEFAULT_BUDGET);
        let KeyVerdict::Violation { longest_prefix, stuck_on } = verdict else {
            panic!("expected a violation, got {verdict:?}");
        };
        assert_eq!(longest_prefix, vec![0, 1]);
        assert_eq!(stuck_on.len(), 1);
        assert_eq!(stuck_on[0].call, Call::Get);
    }

    #[test]
    fn rejects_a_lost_acknowledged_write() {
        let history = vec![op(1, set("x"), Outcome::Ok, 0, 10), op(2, Call::Get, read(None), 20, 30)];
        assert!(matches!(check_key(&history, DEFAULT_BUDGET), KeyVerdict::Violation { .. }));
    }

    #[test]
    fn rejects_reads_that_go_back_in_time() {
        // Classic non-linearizable history: two sequential reads of one concurrent write see new then old.
        let history = vec![
            op(1, set("1"), Outcome::Ok, 0, 5),
            op(2, set("2"), Outcome::Ok, 10, 100),
            op(3, Call::Get, read(Some("2")), 20, 30),
            op(3, Call::Get, read(Some("1")), 40, 50),
        ];
        assert!(matches!(check_key(&history, DEFAULT_BUDGET), KeyVerdict::Violation { .. }));
    }

    #[test]
    fn unknown_writes_may_or_may_not_take_effect() {
        let taken = vec![
            op(1, set("a"), Outcome::Ok, 0, 10),
            op(2, set("b"), Outcome::Unknown, 20, 0),
            op(3, Call::Get, read(Some("b")), 1000, 1010),
        ];
        assert_eq!(check_key(&taken, DEFAULT_BUDGET), KeyVerdict::Linearizable);
        let not_taken = vec![
            op(1, set("a"), Outcome::Ok, 0, 10),
            op(2, set("b"), Outcome::Unknown, 20, 0),
            op(3, Call::Get, read(Some("a")), 1000, 1010),
        ];
        assert_eq!(check_key(&not_taken, DEFAULT_BUDGET), KeyVerdict::Linearizable);
        // But not before it was invoked.
        let too_early = vec![op(2, set("b"), Outcome::Unknown, 20, 0), op(3, Call::Get, read(Some("b")), 0, 10)];
        assert!(matches!(check_key(&too_early, DEFAULT_BUDGET), KeyVerdict::Violation { .. }));
    }

    #[test]
    fn cas_follows_the_register() {
        let history = vec![
            op(1, Call::Cas { expected: None, new: "a".into() }, Outcome::Ok, 0, 10),
            op(2, Call::Cas { expected: None, new: "b".into() }, Outcome::CasMismatch, 20, 30),
            op(1, Call::Cas { expected: Some("a".into()), new: "c".into() }, Outcome::Ok, 40, 50),
            op(2, Call::Get, read(Some("c")), 60, 70),
            op(2, Call::Del, Outcome::Ok, 80, 90),
            op(2, Call::Del, Outcome::NotFound, 100, 110),
        ];
        assert_eq!(check_key(&history, DEFAULT_BUDGET), KeyVerdict::Linearizable);
        let mut wrong = history.clone();
        wrong[1].outcome = Outcome::Ok;
        assert!(matches!(check_key(&wrong, DEFAULT_BUDGET), KeyVerdict::Violation { .. }));
    }

    #[test]
    fn check_splits_by_key_and_drops_unknown_reads() {
        let mut history = vec![op(1, set("a"), Outcome::Ok, 0, 10), op(2, Call::Get, Outcome::Unknown, 5, 0)];
        let mut other = op(3, Call::Get, read(Some("zzz")), 20, 30);
        other.key = "other".into();
        history.push(other);
        let report = check(&history);
        assert_eq!(report.operations, 2);
        assert_eq!(report.keys["k"], KeyVerdict::Linearizable);
        assert!(matches!(report.keys["other"], KeyVerdict::Violation { .. }));
        assert!(!report.passed());
    }

    #[test]
    fn many_concurrent_operations_stay_tractable() {
        // 3 clients, 300 operations, overlapping windows, all reads consistent with a sequential order.
        let mut history = Vec::new();
        for round in 0..100u64 {
            let base = round * 100;
            history.push(op(1, set(&round.to_string()), Outcome::Ok, base, base + 60));
            history.push(op(2, Call::Get, read(Some(&round.to_string())), base + 50, base + 90));
            history.push(op(3, set(&format!("u{round}")), Outcome::Unknown, base + 1, 0));
        }
        assert_eq!(check_key(&history, DEFAULT_BUDGET), KeyVerdict::Linearizable);
    }
}
