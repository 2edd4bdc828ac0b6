//! An interval map for range watchers: distinct half-open key ranges
//! `[start, end)`, each holding a set of values, answering "which ranges
//! contain this key" in expected O(log n + matches) (etcd's
//! `adt.IntervalTree`, used by its watcherGroup the same way).
//!
//! It is a treap ordered by `(start, end)` and augmented with the largest
//! `end` in each subtree, so a stabbing query skips every subtree whose
//! ranges all end at or before the key. Priorities come from a counter run
//! through splitmix64: deterministic (no OS randomness in a pure module) and
//! still balanced in expectation whatever order ranges arrive in.
//!
//! Invariants: every node holds a non-empty value set; `max_end` of a node
//! is the largest `end` in its subtree; the tree is a binary search tree on
//! `(start, end)` and a max-heap on `prio`.

use std::collections::BTreeSet;

/// Where a range stops. Declaration order makes `Key(_) < Infinity`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum End {
    /// Up to, not including, this key.
    Key(Vec<u8>),
    /// Every key from the start on (etcd's "from key", `range_end = [0]`).
    Infinity,
}

impl End {
    /// Whether a key below this end is `key`, i.e. `key < end`.
    fn above(&self, key: &[u8]) -> bool {
        match self {
            End::Key(end) => key < end.as_slice(),
            End::Infinity => true,
        }
    }
}

type Link<V> = Option<Box<Node<V>>>;

#[derive(Debug)]
struct Node<V> {
    start: Vec<u8>,
    end: End,
    max_end: End,
    prio: u64,
    values: BTreeSet<V>,
    left: Link<V>,
    right: Link<V>,
}

impl<V> Node<V> {
    fn fix(&mut self) {
        let mut max = self.end.clone();
        for child in [&self.left, &self.right].into_iter().flatten() {
            if child.max_end > max {
                max = child.max_end.clone();
            }
        }
        self.max_end = max;
    }

    fn cmp_key(&self, start: &[u8], end: &End) -> std::cmp::Ordering {
        (self.start.as_slice(), &self.end).cmp(&(start, end))
    }
}

#[derive(Debug)]
pub(crate) struct IntervalMap<V> {
    root: Link<V>,
    seq: u64,
    ranges: usize,
}

impl<V> Default for IntervalMap<V> {
    fn default() -> Self {
        IntervalMap {
            root: None,
            seq: 0,
            ranges: 0,
        }
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Splits `t` into the nodes ordered before `(start, end)` and the rest.
fn split<V>(t: Link<V>, start: &[u8], end: &End) -> (Link<V>, Link<V>) {
    let Some(mut node) = t else {
        return (None, None);
    };
    if node.cmp_key(start, end).is_lt() {
        let (l, r) = split(node.right.take(), start, end);
        node.right = l;
        node.fix();
        (Some(node), r)
    } else {
        let (l, r) = split(node.left.take(), start, end);
        node.left = r;
        node.fix();
        (l, Some(node))
    }
}

/// Joins two treaps where every node of `a` orders before every node of `b`.
fn merge<V>(a: Link<V>, b: Link<V>) -> Link<V> {
    match (a, b) {
        (None, b) => b,
        (a, None) => a,
        (Some(mut a), Some(mut b)) => {
            if a.prio >= b.prio {
                a.right = merge(a.right.take(), Some(b));
                a.fix();
                Some(a)
            } else {
                b.left = merge(Some(a), b.left.take());
                b.fix();
                Some(b)
            }
        }
    }
}

/// Removes `value` from the node `(start, end)`, dropping the node when its
/// set empties. Returns whether the value was there and whether the node
/// went.
fn remove<V: Ord>(t: &mut Link<V>, start: &[u8], end: &End, value: &V) -> (bool, bool) {
    let Some(node) = t else {
        return (false, false);
    };
    let result = match node.cmp_key(start, end) {
        std::cmp::Ordering::Less => remove(&mut node.right, start, end, value),
        std::cmp::Ordering::Greater => remove(&mut node.left, start, end, value),
        std::cmp::Ordering::Equal => {
            let removed = node.values.remove(value);
            if node.values.is_empty() {
                let left = node.left.take();
                let right = node.right.take();
                *t = merge(left, right);
                return (removed, true);
            }
            (removed, false)
        }
    };
    node.fix();
    result
}

fn stab<V, F: FnMut(&V)>(t: &Link<V>, key: &[u8], visit: &mut F) {
    let Some(node) = t else {
        return;
    };
    if !node.max_end.above(key) {
        // Every range below here ends at or before the key.
        return;
    }
    stab(&node.left, key, visit);
    if node.start.as_slice() <= key {
        if node.end.above(key) {
            node.values.iter().for_each(&mut *visit);
        }
        // Right subtree starts are >= this start, so may still be <= key.
        stab(&node.right, key, visit);
    }
}

impl<V: Ord> IntervalMap<V> {
    /// Adds `value` to the range `[start, end)`.
    pub(crate) fn insert(&mut self, start: &[u8], end: &End, value: V) {
        let mut cur = &mut self.root;
        while let Some(node) = cur {
            match node.cmp_key(start, end) {
                std::cmp::Ordering::Less => cur = &mut node.right,
                std::cmp::Ordering::Greater => cur = &mut node.left,
                std::cmp::Ordering::Equal => {
                    node.values.insert(value);
                    return;
                }
            }
        }
        self.seq = self.seq.wrapping_add(1);
        let node = Box::new(Node {
            start: start.to_vec(),
            end: end.clone(),
            max_end: end.clone(),
            prio: splitmix64(self.seq),
            values: BTreeSet::from([value]),
            left: None,
            right: None,
        });
        let (l, r) = split(self.root.take(), start, end);
        self.root = merge(merge(l, Some(node)), r);
        self.ranges += 1;
    }

    /// Removes `value` from `[start, end)`; returns whether it was there.
    pub(crate) fn remove(&mut self, start: &[u8], end: &End, value: &V) -> bool {
        let (removed, dropped) = remove(&mut self.root, start, end, value);
        if dropped {
            self.ranges = self.ranges.saturating_sub(1);
        }
        removed
    }

    /// Calls `visit` with every value whose range contains `key`.
    pub(crate) fn stab<F: FnMut(&V)>(&self, key: &[u8], mut visit: F) {
        stab(&self.root, key, &mut visit);
    }

    /// Distinct ranges held.
    #[cfg(test)]
    pub(crate) fn ranges(&self) -> usize {
        self.ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny deterministic PRNG so the test needs no dependency.
    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_add(1);
        splitmix64(*state)
    }

    #[test]
    fn stabbing_matches_a_linear_scan() {
        let mut rng = 7u64;
        let mut map = IntervalMap::default();
        let mut model: Vec<(Vec<u8>, End, u32)> = Vec::new();
        for step in 0..4000u32 {
            let roll = next(&mut rng) % 10;
            if roll < 6 || model.is_empty() {
                let a = (next(&mut rng) % 40) as u8;
                let b = a + 1 + (next(&mut rng) % 10) as u8;
                let end = if next(&mut rng) % 8 == 0 {
                    End::Infinity
                } else {
                    End::Key(vec![b])
                };
                // Few distinct ranges, so sets hold several values.
                map.insert(&[a], &end, step);
                model.push((vec![a], end, step));
            } else {
                let i = (next(&mut rng) % model.len() as u64) as usize;
                let (s, e, v) = model.swap_remove(i);
                assert!(map.remove(&s, &e, &v));
                assert!(!map.remove(&s, &e, &v));
            }
            let key = [(next(&mut rng) % 52) as u8];
            let mut got = Vec::new();
            map.stab(&key, |v| got.push(*v));
            got.sort_unstable();
            let mut want: Vec<u32> = model
                .iter()
                .filter(|(s, e, _)| s.as_slice() <= key.as_slice() && e.above(&key))
                .map(|(_, _, v)| *v)
                .collect();
            want.sort_unstable();
            assert_eq!(got, want, "step {step} key {key:?}");
            let distinct: BTreeSet<(&Vec<u8>, &End)> =
                model.iter().map(|(s, e, _)| (s, e)).collect();
            assert_eq!(map.ranges(), distinct.len());
        }
    }
}
