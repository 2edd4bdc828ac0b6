//! The ordered key index: a persistent B+ tree of [`KeyIndex`]es, sorted by
//! the key their changes carry.
//!
//! Why not `imbl::OrdMap`: a map needs its key beside the value, and a key
//! here is already inside every change block, so a map slot would hold a
//! second copy (its own allocation) of every key; and `imbl` splits a full
//! node in half, so keys written in order (the common case: sequential
//! IDs, time-ordered names) leave every node half empty. Here a leaf slot
//! is the 8-byte index alone, a full leaf that grows at its end splits
//! off only the new entry (leaves written in order stay full), and only
//! branches hold key copies (one per child).
//!
//! Persistence: nodes sit behind `Arc`s; a clone of the map is O(1) and
//! shares every node; a write copies only the nodes on its path that are
//! shared (`Arc::make_mut`), so a snapshot reads a clone while writes go on.
//!
//! Invariants: every leaf is at the same depth; a branch with children
//! `k0..kn` holds separators `s0..s(n-1)`, every key in `ki` is `>= s(i-1)`
//! and `< si`; no node is empty except an empty map's absent root; a node
//! holds at most [`MAX`] entries or children; a removal merges a node that
//! fell below a quarter full with a neighbour when both fit in three
//! quarters, so deletions do not leave the tree mostly empty.

use std::ops::Bound;
use std::sync::Arc;

use super::key_index::KeyIndex;

/// Entries per leaf, children per branch.
const MAX: usize = 32;

#[derive(Clone, Default)]
pub(crate) struct KeyMap {
    root: Option<Arc<Node>>,
    len: usize,
}

#[derive(Clone)]
enum Node {
    Leaf(Vec<KeyIndex>),
    Branch(Branch),
}

/// A separator: a copy of the first key of the child after it.
type Sep = Arc<[u8]>;

#[derive(Clone)]
struct Branch {
    seps: Vec<Sep>,
    kids: Vec<Arc<Node>>,
}

/// The key an index is filed under: its changes' key (every change of a
/// key carries it; an index is never empty).
fn key_of(index: &KeyIndex) -> &[u8] {
    index.changes().first().map_or(&[], |c| c.key())
}

impl Node {
    fn size(&self) -> usize {
        match self {
            Node::Leaf(v) => v.len(),
            Node::Branch(b) => b.kids.len(),
        }
    }
}

impl Branch {
    /// The child whose range holds `key`.
    fn child(&self, key: &[u8]) -> usize {
        self.seps.partition_point(|s| **s <= *key)
    }
}

/// A split-off right sibling and the separator in front of it.
type Split = Option<(Sep, Arc<Node>)>;

impl KeyMap {
    pub(crate) fn new() -> KeyMap {
        KeyMap::default()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&KeyIndex> {
        let mut node = self.root.as_deref()?;
        loop {
            match node {
                Node::Branch(b) => node = &b.kids[b.child(key)],
                Node::Leaf(v) => {
                    return v
                        .binary_search_by(|e| key_of(e).cmp(key))
                        .ok()
                        .map(|i| &v[i])
                }
            }
        }
    }

    /// The index of `key`, to change in place (the changes must stay
    /// changes of `key`). Copies the shared nodes on the way.
    pub(crate) fn get_mut(&mut self, key: &[u8]) -> Option<&mut KeyIndex> {
        // Look first, so a miss copies nothing.
        self.get(key)?;
        self.get_mut_to_write(key)
    }

    /// [`KeyMap::get_mut`] in one search, for a caller that writes either
    /// way (a put: a miss is followed by an insert down the same path):
    /// the shared nodes on the way are copied even when `key` is missing.
    pub(crate) fn get_mut_to_write(&mut self, key: &[u8]) -> Option<&mut KeyIndex> {
        let mut node = Arc::make_mut(self.root.as_mut()?);
        loop {
            match node {
                Node::Branch(b) => {
                    let i = b.child(key);
                    node = Arc::make_mut(&mut b.kids[i]);
                }
                Node::Leaf(v) => {
                    let i = v.binary_search_by(|e| key_of(e).cmp(key)).ok()?;
                    return v.get_mut(i);
                }
            }
        }
    }

    /// Files `index` under its key, replacing (and returning) what was
    /// there.
    pub(crate) fn insert(&mut self, index: KeyIndex) -> Option<KeyIndex> {
        let Some(root) = self.root.as_mut() else {
            self.root = Some(Arc::new(Node::Leaf(vec![index])));
            self.len = 1;
            return None;
        };
        let mut replaced = None;
        if let Some((sep, right)) = insert_into(root, index, &mut replaced) {
            let left = root.clone();
            *root = Arc::new(Node::Branch(Branch {
                seps: vec![sep],
                kids: vec![left, right],
            }));
        }
        if replaced.is_none() {
            self.len += 1;
        }
        replaced
    }

    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<KeyIndex> {
        self.get(key)?;
        let root = self.root.as_mut()?;
        let removed = remove_from(root, key);
        if removed.is_some() {
            self.len -= 1;
        }
        // Drop an empty root; a branch root with one child gives way to it.
        loop {
            match self.root.as_deref() {
                Some(n) if n.size() == 0 => self.root = None,
                Some(Node::Branch(b)) if b.kids.len() == 1 => {
                    self.root = Some(b.kids[0].clone());
                }
                _ => break,
            }
        }
        removed
    }

    /// Entries with keys in `(lo, hi)` as the bounds say, in key order.
    pub(crate) fn range<'a>(&'a self, lo: Bound<&[u8]>, hi: Bound<&'a [u8]>) -> Iter<'a> {
        let mut iter = Iter {
            stack: Vec::new(),
            leaf: &[],
            pos: 0,
            hi,
        };
        let Some(mut node) = self.root.as_deref() else {
            return iter;
        };
        loop {
            match node {
                Node::Branch(b) => {
                    let i = match lo {
                        Bound::Included(k) | Bound::Excluded(k) => b.child(k),
                        Bound::Unbounded => 0,
                    };
                    iter.stack.push((b, i));
                    node = &b.kids[i];
                }
                Node::Leaf(v) => {
                    iter.leaf = v;
                    iter.pos = match lo {
                        Bound::Included(k) => v.partition_point(|e| key_of(e) < k),
                        Bound::Excluded(k) => v.partition_point(|e| key_of(e) <= k),
                        Bound::Unbounded => 0,
                    };
                    return iter;
                }
            }
        }
    }

    pub(crate) fn iter(&self) -> Iter<'_> {
        self.range(Bound::Unbounded, Bound::Unbounded)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &KeyIndex> {
        self.iter()
    }

    /// Keys and their indexes, in key order (from `iter`).
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&[u8], &KeyIndex)> {
        self.iter().map(|e| (key_of(e), e))
    }
}

fn insert_into(node: &mut Arc<Node>, index: KeyIndex, replaced: &mut Option<KeyIndex>) -> Split {
    match Arc::make_mut(node) {
        Node::Leaf(v) => {
            let key = key_of(&index);
            let pos = match v.binary_search_by(|e| key_of(e).cmp(key)) {
                Ok(i) => {
                    *replaced = Some(std::mem::replace(&mut v[i], index));
                    return None;
                }
                Err(i) => i,
            };
            if v.len() < MAX {
                if v.len() == v.capacity() {
                    // Grow by doubling up to exactly MAX.
                    v.reserve_exact(v.len().max(4).min(MAX - v.len()));
                }
                v.insert(pos, index);
                return None;
            }
            // Full. Appending at the end (keys written in order) keeps
            // this leaf full and starts a new one; otherwise halves.
            let right = if pos == v.len() {
                let mut right = Vec::with_capacity(4);
                right.push(index);
                right
            } else {
                let mut right = v.split_off(MAX / 2);
                if pos <= MAX / 2 {
                    v.insert(pos, index);
                } else {
                    right.insert(pos - MAX / 2, index);
                }
                right
            };
            let sep: Sep = right.first().map_or(&[][..], key_of).into();
            Some((sep, Arc::new(Node::Leaf(right))))
        }
        Node::Branch(b) => {
            let i = b.child(key_of(&index));
            let (sep, kid) = insert_into(&mut b.kids[i], index, replaced)?;
            b.seps.insert(i, sep);
            b.kids.insert(i + 1, kid);
            if b.kids.len() <= MAX {
                return None;
            }
            // Over full. A new last child (keys in order) moves out alone.
            let mid = if i + 1 == b.kids.len() - 1 {
                b.kids.len() - 1
            } else {
                b.kids.len() / 2
            };
            // Separators s(mid-1) (moves up) and s(mid).. (go right).
            let kids = b.kids.split_off(mid);
            let mut seps = b.seps.split_off(mid - 1).into_iter();
            let up = seps.next().unwrap_or_else(|| Sep::from(&[][..]));
            let seps = seps.collect();
            Some((up, Arc::new(Node::Branch(Branch { seps, kids }))))
        }
    }
}

fn remove_from(node: &mut Arc<Node>, key: &[u8]) -> Option<KeyIndex> {
    match Arc::make_mut(node) {
        Node::Leaf(v) => {
            let i = v.binary_search_by(|e| key_of(e).cmp(key)).ok()?;
            let removed = v.remove(i);
            if v.len() < v.capacity() / 2 {
                v.shrink_to(v.len().max(4));
            }
            Some(removed)
        }
        Node::Branch(b) => {
            let i = b.child(key);
            let removed = remove_from(&mut b.kids[i], key)?;
            let size = b.kids[i].size();
            if size == 0 {
                b.kids.remove(i);
                if !b.seps.is_empty() {
                    b.seps.remove(i.saturating_sub(1));
                }
            } else if size < MAX / 4 && b.kids.len() > 1 {
                let (l, r) = if i > 0 { (i - 1, i) } else { (i, i + 1) };
                if b.kids[l].size() + b.kids[r].size() <= MAX * 3 / 4 {
                    merge(b, l);
                }
            }
            Some(removed)
        }
    }
}

/// Moves child `l + 1` of `b` into child `l` (they fit in one node).
fn merge(b: &mut Branch, l: usize) {
    let right = b.kids.remove(l + 1);
    let sep = b.seps.remove(l);
    let right = Arc::try_unwrap(right).unwrap_or_else(|shared| (*shared).clone());
    match (Arc::make_mut(&mut b.kids[l]), right) {
        (Node::Leaf(left), Node::Leaf(right)) => left.extend(right),
        (Node::Branch(left), Node::Branch(right)) => {
            left.seps.push(sep);
            left.seps.extend(right.seps);
            left.kids.extend(right.kids);
        }
        // Siblings are at the same depth, so always the same kind; were
        // they not, both stay as they were.
        (_, right) => {
            b.kids.insert(l + 1, Arc::new(right));
            b.seps.insert(l, sep);
        }
    }
}

/// In-order iterator over a key range (see [`KeyMap::range`]).
pub(crate) struct Iter<'a> {
    /// The branches above the current leaf, each with the child taken.
    stack: Vec<(&'a Branch, usize)>,
    leaf: &'a [KeyIndex],
    pos: usize,
    hi: Bound<&'a [u8]>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a KeyIndex;

    fn next(&mut self) -> Option<&'a KeyIndex> {
        while self.pos >= self.leaf.len() {
            // Up to the nearest branch with a child to the right, then down
            // its leftmost path.
            let (b, i) = loop {
                let (b, i) = self.stack.pop()?;
                if i + 1 < b.kids.len() {
                    break (b, i + 1);
                }
            };
            self.stack.push((b, i));
            let mut node: &'a Node = &b.kids[i];
            loop {
                match node {
                    Node::Branch(b) => {
                        self.stack.push((b, 0));
                        node = &b.kids[0];
                    }
                    Node::Leaf(v) => {
                        self.leaf = v;
                        self.pos = 0;
                        break;
                    }
                }
            }
        }
        let entry = &self.leaf[self.pos];
        let key = key_of(entry);
        let inside = match self.hi {
            Bound::Included(h) => key <= h,
            Bound::Excluded(h) => key < h,
            Bound::Unbounded => true,
        };
        if !inside {
            self.stack.clear();
            self.leaf = &[];
            return None;
        }
        self.pos += 1;
        Some(entry)
    }
}

impl std::fmt::Debug for KeyMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::key_index::ChangeRef;
    use crate::mvcc::Revision;
    use std::collections::BTreeMap;

    fn index(key: &[u8], main: i64) -> KeyIndex {
        KeyIndex::new(ChangeRef::new(key, Revision::new(main, 0), main, 1, 0, b"v").expect("small"))
    }

    /// Checks the structural invariants; returns the depth.
    fn check(node: &Node, lo: Option<&[u8]>, hi: Option<&[u8]>) -> usize {
        assert!(node.size() > 0 && node.size() <= MAX);
        match node {
            Node::Leaf(v) => {
                for pair in v.windows(2) {
                    assert!(key_of(&pair[0]) < key_of(&pair[1]));
                }
                for e in v {
                    assert!(lo.is_none_or(|l| key_of(e) >= l));
                    assert!(hi.is_none_or(|h| key_of(e) < h));
                }
                1
            }
            Node::Branch(b) => {
                assert_eq!(b.seps.len() + 1, b.kids.len());
                let mut depth = None;
                for (i, kid) in b.kids.iter().enumerate() {
                    let l = if i == 0 { lo } else { Some(&*b.seps[i - 1]) };
                    let h = b.seps.get(i).map(|s| &**s).or(hi);
                    let d = check(kid, l, h);
                    assert!(depth.is_none_or(|x| x == d), "leaves at one depth");
                    depth = Some(d);
                }
                depth.unwrap_or(0) + 1
            }
        }
    }

    fn same(map: &KeyMap, model: &BTreeMap<Vec<u8>, i64>) {
        assert_eq!(map.len(), model.len());
        let got: Vec<(Vec<u8>, i64)> = map
            .entries()
            .map(|(k, e)| (k.to_vec(), e.changes()[0].main()))
            .collect();
        let want: Vec<(Vec<u8>, i64)> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(got, want);
        if let Some(root) = map.root.as_deref() {
            check(root, None, None);
        }
    }

    #[test]
    fn matches_a_btreemap_under_random_operations_and_clones_stay_put() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for round in 0..6 {
            let mut map = KeyMap::new();
            let mut model = BTreeMap::new();
            let mut frozen: Vec<(KeyMap, BTreeMap<Vec<u8>, i64>)> = Vec::new();
            let space = [50, 500, 5000][round % 3];
            for step in 0..6000i64 {
                let k = format!("{:05}", rand(space)).into_bytes();
                match rand(10) {
                    0..=5 => {
                        let replaced = map.insert(index(&k, step + 1));
                        assert_eq!(
                            replaced.map(|e| e.changes()[0].main()),
                            model.insert(k, step + 1)
                        );
                    }
                    6..=8 => {
                        let removed = map.remove(&k);
                        assert_eq!(removed.map(|e| e.changes()[0].main()), model.remove(&k));
                    }
                    _ => {
                        assert_eq!(
                            map.get(&k).map(|e| e.changes()[0].main()),
                            model.get(&k).copied()
                        );
                        if let Some(e) = map.get_mut(&k) {
                            e.push(
                                ChangeRef::new(&k, Revision::new(step + 1, 0), 1, 2, 0, b"w")
                                    .expect("small"),
                            );
                        }
                    }
                }
                if step % 500 == 0 {
                    frozen.push((map.clone(), model.clone()));
                }
                // In order, as sequential IDs arrive.
                if round >= 3 && step % 3 == 0 {
                    let k = format!("z{step:08}").into_bytes();
                    map.insert(index(&k, step + 1));
                    model.insert(k, step + 1);
                }
            }
            same(&map, &model);
            for (m, model) in &frozen {
                same(m, model);
            }
            // Ranges, all bound kinds.
            for _ in 0..200 {
                let a = format!("{:05}", rand(space)).into_bytes();
                let b = format!("{:05}", rand(space)).into_bytes();
                for (lo, hi) in [
                    (Bound::Included(&a[..]), Bound::Excluded(&b[..])),
                    (Bound::Excluded(&a[..]), Bound::Included(&b[..])),
                    (Bound::Included(&a[..]), Bound::Unbounded),
                    (Bound::Unbounded, Bound::Excluded(&b[..])),
                ] {
                    if a > b {
                        continue;
                    }
                    let got: Vec<&[u8]> = map.range(lo, hi).map(key_of).collect();
                    let want: Vec<&[u8]> = model
                        .range::<[u8], _>((lo, hi))
                        .map(|(k, _)| &k[..])
                        .collect();
                    assert_eq!(got, want);
                }
            }
            // Empty it completely.
            let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
            for k in keys {
                assert!(map.remove(&k).is_some());
                model.remove(&k);
            }
            same(&map, &model);
            assert!(map.root.is_none());
        }
    }

    #[test]
    fn keys_written_in_order_fill_their_leaves() {
        let mut map = KeyMap::new();
        let n = 10_000;
        for i in 0..n {
            map.insert(index(format!("{i:08}").as_bytes(), i + 1));
        }
        fn leaves(node: &Node, out: &mut Vec<usize>) {
            match node {
                Node::Leaf(v) => out.push(v.len()),
                Node::Branch(b) => b.kids.iter().for_each(|k| leaves(k, out)),
            }
        }
        let mut sizes = Vec::new();
        leaves(map.root.as_deref().expect("root"), &mut sizes);
        assert_eq!(sizes.len(), (n as usize).div_ceil(MAX));
    }
}
