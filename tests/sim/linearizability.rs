//! A Wing–Gong linearizability checker with memoization (the search
//! Porcupine does), over a single-key register with compare-and-swap.
//! Callers partition a KV history per key: each key is an independent
//! register, and a history is linearizable iff every key's is.
//!
//! Operations whose outcome is unknown (client timed out) have `ret ==
//! u64::MAX` and no output: they may take effect at any point after their
//! call, or never.

use std::collections::HashSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    Put(u64),
    Get,
    /// Compare-and-swap: if the value is `expect`, set it to `new`.
    Cas {
        expect: Option<u64>,
        new: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Done,
    Value(Option<u64>),
    Swapped(bool),
}

#[derive(Debug, Clone)]
pub struct Op {
    #[allow(dead_code)] // kept for debugging output
    pub client: usize,
    pub call: u64,
    pub ret: u64,
    pub input: Input,
    pub output: Option<Output>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    Violation,
    /// The search budget ran out (reported, not counted as a violation).
    Unknown,
}

/// The register model: the new state, or `None` if `output` is impossible.
fn apply(state: Option<u64>, input: Input, output: Option<Output>) -> Option<Option<u64>> {
    match input {
        Input::Put(v) => Some(Some(v)),
        Input::Get => match output {
            Some(Output::Value(v)) if v == state => Some(state),
            None => Some(state),
            _ => None,
        },
        Input::Cas { expect, new } => {
            let swapped = state == expect;
            match output {
                Some(Output::Swapped(s)) if s != swapped => None,
                _ => Some(if swapped { Some(new) } else { state }),
            }
        }
    }
}

struct Search<'a> {
    ops: &'a [Op],
    done: Vec<bool>,
    bits: Vec<u64>,
    remaining: usize,
    memo: HashSet<(Vec<u64>, Option<u64>)>,
    budget: u64,
}

impl Search<'_> {
    fn search(&mut self, state: Option<u64>) -> Option<bool> {
        if self.remaining == 0 {
            return Some(true);
        }
        if !self.memo.insert((self.bits.clone(), state)) {
            return Some(false);
        }
        if self.budget == 0 {
            return None;
        }
        self.budget -= 1;
        let min_ret = (0..self.ops.len())
            .filter(|&i| !self.done[i])
            .map(|i| self.ops[i].ret)
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..self.ops.len() {
            let op = &self.ops[i];
            if op.call > min_ret {
                break;
            }
            if self.done[i] {
                continue;
            }
            let Some(next) = apply(state, op.input, op.output) else {
                continue;
            };
            self.done[i] = true;
            self.bits[i / 64] |= 1 << (i % 64);
            let completed = op.ret != u64::MAX;
            if completed {
                self.remaining -= 1;
            }
            let r = self.search(next);
            self.done[i] = false;
            self.bits[i / 64] &= !(1 << (i % 64));
            if completed {
                self.remaining += 1;
            }
            match r {
                Some(false) => {}
                other => return other,
            }
        }
        Some(false)
    }
}

/// Checks one key's history, starting from an absent value.
pub fn check_register(ops: &[Op]) -> Verdict {
    let mut ops = ops.to_vec();
    ops.sort_by_key(|o| o.call);
    let mut s = Search {
        remaining: ops.iter().filter(|o| o.ret != u64::MAX).count(),
        done: vec![false; ops.len()],
        bits: vec![0; ops.len().div_ceil(64)],
        ops: &ops,
        memo: HashSet::new(),
        budget: 2_000_000,
    };
    match s.search(None) {
        Some(true) => Verdict::Linearizable,
        Some(false) => Verdict::Violation,
        None => Verdict::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: u64, ret: u64, input: Input, output: Option<Output>) -> Op {
        Op {
            client: 0,
            call,
            ret,
            input,
            output,
        }
    }

    #[test]
    fn accepts_concurrent_and_rejects_stale_reads() {
        // put(1) overlaps a read of None: fine.
        let ok = [
            op(1, 4, Input::Put(1), Some(Output::Done)),
            op(2, 3, Input::Get, Some(Output::Value(None))),
        ];
        assert_eq!(check_register(&ok), Verdict::Linearizable);
        // A read that starts after put(1) returned must see it.
        let stale = [
            op(1, 2, Input::Put(1), Some(Output::Done)),
            op(3, 4, Input::Get, Some(Output::Value(None))),
        ];
        assert_eq!(check_register(&stale), Verdict::Violation);
        // An unknown-outcome put may explain a later read ...
        let pending = [
            op(1, u64::MAX, Input::Put(7), None),
            op(3, 4, Input::Get, Some(Output::Value(Some(7)))),
            op(5, 6, Input::Get, Some(Output::Value(Some(7)))),
        ];
        assert_eq!(check_register(&pending), Verdict::Linearizable);
        // ... but not a value flip-flopping back.
        let flip = [
            op(1, u64::MAX, Input::Put(7), None),
            op(3, 4, Input::Get, Some(Output::Value(Some(7)))),
            op(5, 6, Input::Get, Some(Output::Value(None))),
        ];
        assert_eq!(check_register(&flip), Verdict::Violation);
        // Two CASes from the same expected value cannot both succeed.
        let cas = [
            op(1, 2, Input::Put(0), Some(Output::Done)),
            op(
                3,
                6,
                Input::Cas {
                    expect: Some(0),
                    new: 1,
                },
                Some(Output::Swapped(true)),
            ),
            op(
                4,
                5,
                Input::Cas {
                    expect: Some(0),
                    new: 2,
                },
                Some(Output::Swapped(true)),
            ),
        ];
        assert_eq!(check_register(&cas), Verdict::Violation);
    }
}
