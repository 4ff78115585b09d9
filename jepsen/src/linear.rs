//! A linearizability checker: the Wing-Gong search with Lowe's memoization (the algorithm of
//! Knossos' `wgl` and of Porcupine). Given operations with invocation and completion times and
//! a sequential model, it searches for an order of the operations that respects real time
//! (an operation that completed before another was invoked comes first) and in which every
//! operation's result is what the model gives. An operation whose outcome is unknown (`info`)
//! may take effect at any point after its invocation, or never.
//!
//! Invariant: the search visits each (set of linearized operations, model state) at most once,
//! so it is exponential only in how many operations overlap, not in the history's length.
//! Unknown-outcome operations with equal arguments are interchangeable (none has a deadline),
//! so they are linearized in the order they were invoked: without that, every subset of them
//! would be a distinct search state, exponential in how many there are in the whole history.
//! A search that still exceeds [`STATES_MAX`] gives up and says so.

use std::collections::HashSet;
use std::hash::Hash;

/// How many distinct search states a check may visit before it gives up.
pub const STATES_MAX: usize = 4_000_000;

/// A sequential specification.
pub trait Model: Clone + Eq + Hash {
    type Op: PartialEq;
    /// The state after `op` if its recorded result is what this state gives, else `None`.
    fn step(&self, op: &Self::Op) -> Option<Self>;
}

/// One operation of the history.
#[derive(Clone, Debug)]
pub struct Timed<O> {
    pub op: O,
    pub invoke: u64,
    /// `None`: the outcome is unknown (it may have taken effect at any time after `invoke`).
    pub complete: Option<u64>,
}

/// Why a history is not linearizable: the most operations any order could explain, and the
/// operation none of those orders could take next (the smallest counterexample the search
/// found: it and the operations concurrent with it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotLinearizable {
    pub linearized: usize,
    /// Index (into the input) of the operation that could not be linearized.
    pub stuck_at: usize,
    /// Indexes of the operations that overlap it in time.
    pub concurrent: Vec<usize>,
    /// True when the search gave up after [`STATES_MAX`] states: not decided either way.
    pub undecided: bool,
}

#[derive(Clone, Copy)]
enum Kind {
    Call,
    Return,
}

#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    kind: Kind,
    prev: usize,
    next: usize,
}

/// Index 0 is the list's head sentinel.
struct List {
    entries: Vec<Entry>,
    /// For each op, the index of its return entry (or `usize::MAX` for an unknown outcome).
    returns: Vec<usize>,
    calls: Vec<usize>,
    /// How many return entries are still in the list.
    returns_left: usize,
}

impl List {
    fn new<O>(ops: &[Timed<O>]) -> List {
        // Calls sort before returns at equal times: times are whole milliseconds, so an op
        // that completed in the millisecond another was invoked counts as concurrent with it
        // (the weaker claim; never a false violation), and an op's call precedes its return.
        let mut events: Vec<(u64, u8, usize)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            events.push((op.invoke, 0, i));
            if let Some(complete) = op.complete {
                events.push((complete.max(op.invoke), 1, i));
            }
        }
        events.sort();
        let mut entries = vec![Entry { op: usize::MAX, kind: Kind::Call, prev: usize::MAX, next: 1 }];
        let mut returns = vec![usize::MAX; ops.len()];
        let mut calls = vec![0; ops.len()];
        for (n, (_, order, op)) in events.iter().enumerate() {
            let index = n + 1;
            let kind = if *order == 0 { Kind::Call } else { Kind::Return };
            match kind {
                Kind::Return => returns[*op] = index,
                Kind::Call => calls[*op] = index,
            }
            entries.push(Entry { op: *op, kind, prev: index - 1, next: index + 1 });
        }
        let end = entries.len();
        entries.last_mut().expect("the head").next = end;
        let returns_left = returns.iter().filter(|r| **r != usize::MAX).count();
        List { entries, returns, calls, returns_left }
    }

    fn end(&self) -> usize {
        self.entries.len()
    }

    fn unlink(&mut self, index: usize) {
        let Entry { prev, next, .. } = self.entries[index];
        self.entries[prev].next = next;
        if next != self.end() {
            self.entries[next].prev = prev;
        }
    }

    fn relink(&mut self, index: usize) {
        let Entry { prev, next, .. } = self.entries[index];
        self.entries[prev].next = index;
        if next != self.end() {
            self.entries[next].prev = index;
        }
    }

    /// Removes op's call and return.
    fn lift(&mut self, op: usize) {
        self.unlink(self.calls[op]);
        if self.returns[op] != usize::MAX {
            self.unlink(self.returns[op]);
            self.returns_left -= 1;
        }
    }

    fn unlift(&mut self, op: usize) {
        if self.returns[op] != usize::MAX {
            self.relink(self.returns[op]);
            self.returns_left += 1;
        }
        self.relink(self.calls[op]);
    }

    /// Whether only calls of unknown-outcome ops are left.
    fn only_unknown_left(&self) -> bool {
        self.returns_left == 0
    }
}

/// Checks `ops` against `model` from state `initial`.
pub fn check<M: Model>(initial: M, ops: &[Timed<M::Op>]) -> Result<(), NotLinearizable> {
    let mut list = List::new(ops);
    // For each unknown-outcome op, the one with equal arguments invoked just before it: it may
    // be linearized only once that one is.
    let mut order: Vec<usize> = (0..ops.len()).filter(|i| ops[*i].complete.is_none()).collect();
    order.sort_by_key(|i| (ops[*i].invoke, *i));
    let mut previous_equal = vec![usize::MAX; ops.len()];
    for (n, &i) in order.iter().enumerate() {
        if let Some(&j) = order[..n].iter().rev().find(|&&j| ops[j].op == ops[i].op) {
            previous_equal[i] = j;
        }
    }
    let mut linearized = vec![0u64; ops.len().div_ceil(64)];
    let mut cache: HashSet<(Vec<u64>, M)> = HashSet::new();
    let mut stack: Vec<(usize, M)> = Vec::new();
    let mut state = initial;
    let mut at = list.entries[0].next;
    let mut best = (0usize, usize::MAX);
    loop {
        if list.only_unknown_left() {
            return Ok(());
        }
        if at == list.end() {
            // Only unknown calls are between here and the end, yet returns remain earlier:
            // cannot happen (a return precedes the end); treat as a dead end.
            at = backtrack(&mut list, &mut stack, &mut state, &mut linearized).ok_or_else(|| stuck(ops, best))?;
            continue;
        }
        let entry = list.entries[at];
        match entry.kind {
            Kind::Call => {
                let waiting = previous_equal[entry.op] != usize::MAX
                    && linearized[previous_equal[entry.op] / 64] & (1 << (previous_equal[entry.op] % 64)) == 0;
                let next_state = if waiting { None } else { state.step(&ops[entry.op].op) };
                let mut advanced = false;
                if let Some(next_state) = next_state {
                    linearized[entry.op / 64] |= 1 << (entry.op % 64);
                    if cache.len() >= STATES_MAX {
                        let mut gave_up = stuck(ops, best);
                        gave_up.undecided = true;
                        return Err(gave_up);
                    }
                    if cache.insert((linearized.clone(), next_state.clone())) {
                        stack.push((entry.op, state.clone()));
                        state = next_state;
                        list.lift(entry.op);
                        if stack.len() > best.0 {
                            best = (stack.len(), usize::MAX);
                        }
                        at = list.entries[0].next;
                        advanced = true;
                    } else {
                        linearized[entry.op / 64] &= !(1 << (entry.op % 64));
                    }
                }
                if !advanced {
                    at = entry.next;
                }
            }
            Kind::Return => {
                if stack.len() >= best.0 && best.1 == usize::MAX {
                    best = (stack.len(), entry.op);
                }
                at = backtrack(&mut list, &mut stack, &mut state, &mut linearized).ok_or_else(|| stuck(ops, best))?;
            }
        }
    }
}

/// Undoes the last linearized op; the entry after its call, or `None` when nothing is left.
fn backtrack<M: Model>(
    list: &mut List,
    stack: &mut Vec<(usize, M)>,
    state: &mut M,
    linearized: &mut [u64],
) -> Option<usize> {
    let (op, previous) = stack.pop()?;
    *state = previous;
    linearized[op / 64] &= !(1 << (op % 64));
    list.unlift(op);
    Some(list.entries[list.calls[op]].next)
}

fn stuck<O>(ops: &[Timed<O>], best: (usize, usize)) -> NotLinearizable {
    let at = if best.1 == usize::MAX { 0 } else { best.1 };
    let (begin, end) = (ops[at].invoke, ops[at].complete.unwrap_or(u64::MAX));
    let concurrent = (0..ops.len())
        .filter(|&i| i != at && ops[i].invoke <= end && ops[i].complete.unwrap_or(u64::MAX) >= begin)
        .collect();
    NotLinearizable { linearized: best.0, stuck_at: at, concurrent, undecided: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A register: write(v) and read() -> v.
    #[derive(Clone, PartialEq, Eq, Hash, Debug)]
    struct Register(u64);

    #[derive(Clone, Debug, PartialEq)]
    enum RegOp {
        Write(u64),
        Read(u64),
    }

    impl Model for Register {
        type Op = RegOp;
        fn step(&self, op: &RegOp) -> Option<Register> {
            match op {
                RegOp::Write(v) => Some(Register(*v)),
                RegOp::Read(v) => (*v == self.0).then(|| self.clone()),
            }
        }
    }

    fn t(op: RegOp, invoke: u64, complete: Option<u64>) -> Timed<RegOp> {
        Timed { op, invoke, complete }
    }

    #[test]
    fn a_sequential_history_that_follows_the_model_passes() {
        let ops = vec![t(RegOp::Write(1), 0, Some(1)), t(RegOp::Read(1), 2, Some(3)), t(RegOp::Write(2), 4, Some(5))];
        assert_eq!(check(Register(0), &ops), Ok(()));
    }

    #[test]
    fn overlapping_operations_may_take_effect_in_either_order() {
        // The read overlaps the write: it may see the old or the new value.
        let old = vec![t(RegOp::Write(1), 0, Some(10)), t(RegOp::Read(0), 1, Some(2))];
        let new = vec![t(RegOp::Write(1), 0, Some(10)), t(RegOp::Read(1), 1, Some(2))];
        assert_eq!(check(Register(0), &old), Ok(()));
        assert_eq!(check(Register(0), &new), Ok(()));
    }

    #[test]
    fn operations_within_one_millisecond_are_ordered_by_their_calls_and_returns() {
        // Each op invoked and completed in the same millisecond.
        let ops = vec![t(RegOp::Write(1), 5, Some(5)), t(RegOp::Read(1), 6, Some(6)), t(RegOp::Write(2), 6, Some(6))];
        assert_eq!(check(Register(0), &ops), Ok(()));
    }

    #[test]
    fn a_stale_read_after_a_completed_write_fails() {
        let ops = vec![t(RegOp::Write(1), 0, Some(1)), t(RegOp::Read(0), 2, Some(3))];
        let error = check(Register(0), &ops).expect_err("stale read");
        assert_eq!(error.stuck_at, 1);
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        let never = vec![t(RegOp::Write(1), 0, None), t(RegOp::Read(0), 5, Some(6))];
        let late = vec![t(RegOp::Write(1), 0, None), t(RegOp::Read(0), 5, Some(6)), t(RegOp::Read(1), 7, Some(8))];
        assert_eq!(check(Register(0), &never), Ok(()));
        assert_eq!(check(Register(0), &late), Ok(()));
        // But not undone once seen.
        let undone = vec![t(RegOp::Write(1), 0, None), t(RegOp::Read(1), 5, Some(6)), t(RegOp::Read(0), 7, Some(8))];
        assert!(check(Register(0), &undone).is_err());
    }

    #[test]
    fn many_unknown_operations_over_a_long_history_are_searched_without_blowing_up() {
        // 60 unknown writes of 1 spread over the history, between known reads of 0 then 1:
        // every subset of them would be a distinct state without the invocation-order rule.
        let mut ops = Vec::new();
        for i in 0..60u64 {
            ops.push(t(RegOp::Write(1), i * 10, None));
            ops.push(t(RegOp::Write(0), i * 10 + 1, Some(i * 10 + 2)));
            ops.push(t(RegOp::Read(0), i * 10 + 3, Some(i * 10 + 4)));
        }
        ops.push(t(RegOp::Read(1), 10_000, Some(10_001)));
        assert_eq!(check(Register(0), &ops), Ok(()));
        // A read of a value never written: to say so, the search must rule out every order.
        ops.push(t(RegOp::Read(2), 10_002, Some(10_003)));
        let error = check(Register(0), &ops).expect_err("2 was never written");
        assert!(!error.undecided, "decided, not given up: {error:?}");
    }

    #[test]
    fn many_concurrent_writers_are_searched_without_blowing_up() {
        // 12 overlapping writes then a read of one of them: the cache keeps this small.
        let mut ops: Vec<Timed<RegOp>> = (1..=12).map(|v| t(RegOp::Write(v), 0, Some(100))).collect();
        ops.push(t(RegOp::Read(7), 200, Some(201)));
        assert_eq!(check(Register(0), &ops), Ok(()));
        ops.push(t(RegOp::Read(13), 300, Some(301)));
        assert!(check(Register(0), &ops).is_err());
    }
}
