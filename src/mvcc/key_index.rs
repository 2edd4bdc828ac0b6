//! One key's history: every change still kept, oldest first.
//!
//! A key lives through generations: a put on a missing key starts one
//! (version 1, create revision = that put's revision), each later put adds
//! one to the version, and a delete writes a tombstone that ends it. The
//! next put starts a new generation from version 1.
//!
//! Invariants, which [`KeyIndex::from_changes`] checks on data read back from
//! a snapshot:
//! - changes are in strictly increasing revision order;
//! - a tombstone (version 0) carries no value, lease or create revision;
//! - within a generation, versions count up by one and the create revision
//!   is the same; a change after a tombstone (or first after compaction
//!   removed the tombstone) may start anywhere, because compaction can
//!   remove a generation's first revisions.
//!
//! Unlike etcd, which keeps the key index (revisions) in memory and the
//! values in bbolt, a change here carries its value: the whole store is in
//! memory (DESIGN §5), and one allocation per change is the least we can
//! do. Fields are ordered so that `Change` packs into 56 bytes on 64-bit.

use serde::{Deserialize, Serialize};

use super::revision::Revision;
use qed_wire::kv::KeyValue;

/// One put or delete of one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Change {
    pub(crate) main: i64,
    /// Create revision of the generation; 0 for a tombstone.
    pub(crate) create: i64,
    /// Version within the generation; 0 marks a tombstone.
    pub(crate) version: i64,
    pub(crate) lease: i64,
    pub(crate) sub: u32,
    #[serde(with = "qed_wire::bytes")]
    pub(crate) value: Box<[u8]>,
}

impl Change {
    pub(crate) fn tombstone(rev: Revision) -> Change {
        Change {
            main: rev.main,
            create: 0,
            version: 0,
            lease: 0,
            sub: rev.sub,
            value: Box::default(),
        }
    }

    pub(crate) fn is_tombstone(&self) -> bool {
        self.version == 0
    }

    pub(crate) fn revision(&self) -> Revision {
        Revision::new(self.main, self.sub)
    }

    /// The wire form. A tombstone becomes what etcd puts in a delete event:
    /// the key and the delete's revision as `mod_revision`, nothing else.
    pub(crate) fn to_kv(&self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: self.create,
            mod_revision: self.main,
            version: self.version,
            value: self.value.to_vec(),
            lease: self.lease,
        }
    }

    /// Estimated bytes this change occupies: the struct plus its value.
    pub(crate) fn footprint(&self) -> u64 {
        (std::mem::size_of::<Change>() + self.value.len()) as u64
    }
}

/// Why a snapshot's key history was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HistoryError {
    Empty,
    OutOfOrder,
    BadTombstone,
    BadVersion,
}

/// A key's changes. Most keys hold exactly one change once compacted, so
/// that case lives inline: one allocation (the index's `Arc`) instead of
/// two, which saves about 30 bytes per key after allocator rounding.
#[derive(Debug, Clone, PartialEq, Eq)]
enum History {
    One(Change),
    Many(Vec<Change>),
}

impl Default for History {
    fn default() -> Self {
        History::Many(Vec::new())
    }
}

impl History {
    fn as_slice(&self) -> &[Change] {
        match self {
            History::One(c) => std::slice::from_ref(c),
            History::Many(v) => v,
        }
    }

    /// Runs `f` on the changes as a `Vec`, then goes back to the inline
    /// form if one change is left.
    fn edit<R>(&mut self, f: impl FnOnce(&mut Vec<Change>) -> R) -> R {
        let mut v = match std::mem::take(self) {
            History::One(c) => vec![c],
            History::Many(v) => v,
        };
        let out = f(&mut v);
        *self = if v.len() == 1 {
            match v.pop() {
                Some(c) => History::One(c),
                None => History::Many(v),
            }
        } else {
            History::Many(v)
        };
        out
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyIndex {
    history: History,
}

impl KeyIndex {
    /// Rebuilds a history read from a snapshot, refusing one that breaks the
    /// invariants above (a corrupt or hostile file must not panic us later).
    pub(crate) fn from_changes(changes: Vec<Change>) -> Result<KeyIndex, HistoryError> {
        if changes.is_empty() {
            return Err(HistoryError::Empty);
        }
        for pair in changes.windows(2) {
            if pair[0].revision() >= pair[1].revision() {
                return Err(HistoryError::OutOfOrder);
            }
            let (prev, next) = (&pair[0], &pair[1]);
            if !prev.is_tombstone()
                && !next.is_tombstone()
                && (next.version != prev.version.saturating_add(1) || next.create != prev.create)
            {
                return Err(HistoryError::BadVersion);
            }
        }
        for c in &changes {
            if c.is_tombstone() {
                if c.create != 0 || c.lease != 0 || !c.value.is_empty() {
                    return Err(HistoryError::BadTombstone);
                }
            } else if c.version < 0 || c.create <= 0 || c.create > c.main {
                return Err(HistoryError::BadVersion);
            }
        }
        let mut index = KeyIndex::default();
        index.history.edit(|v| {
            *v = changes;
            v.shrink_to_fit();
        });
        Ok(index)
    }

    pub(crate) fn changes(&self) -> &[Change] {
        self.history.as_slice()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.changes().is_empty()
    }

    /// The key's value now, if it exists.
    pub(crate) fn latest(&self) -> Option<&Change> {
        self.changes().last().filter(|c| !c.is_tombstone())
    }

    /// The key's value as of main revision `rev` (the last change of that
    /// revision counts), if it existed then.
    pub(crate) fn at(&self, rev: i64) -> Option<&Change> {
        let changes = self.changes();
        let n = changes.partition_point(|c| c.main <= rev);
        n.checked_sub(1)
            .and_then(|i| changes.get(i))
            .filter(|c| !c.is_tombstone())
    }

    /// Position of the change made at exactly `rev`, if still kept.
    pub(crate) fn position(&self, rev: Revision) -> Option<usize> {
        self.changes()
            .binary_search_by(|c| c.revision().cmp(&rev))
            .ok()
    }

    /// The live value just before the change at `index` (a watcher's
    /// `prev_kv`); `None` if the key did not exist or that past was
    /// compacted away.
    pub(crate) fn before(&self, index: usize) -> Option<&Change> {
        index
            .checked_sub(1)
            .and_then(|i| self.changes().get(i))
            .filter(|c| !c.is_tombstone())
    }

    /// Appends a change; the caller guarantees it is newer than the last.
    ///
    /// Small histories grow exactly (`Vec`'s first growth would reserve
    /// four); longer ones (hot keys between compactions) double as usual to
    /// stay amortized O(1).
    pub(crate) fn push(&mut self, change: Change) {
        if let History::Many(v) = &mut self.history {
            if v.is_empty() {
                self.history = History::One(change);
                return;
            }
        }
        self.history.edit(|v| {
            if v.len() < 4 {
                v.reserve_exact(1);
            }
            v.push(change);
        });
    }

    /// Removes the newest change (rolling back a failed txn).
    pub(crate) fn pop(&mut self) -> Option<Change> {
        self.history.edit(|v| v.pop())
    }

    /// Index of the change compaction at `at` keeps from `..=at`: the newest
    /// change at or below `at`, unless it is a tombstone (etcd's
    /// `keyIndex.keep`).
    pub(crate) fn kept_at(&self, at: i64) -> Option<usize> {
        let changes = self.changes();
        let n = changes.partition_point(|c| c.main <= at);
        let i = n.checked_sub(1)?;
        match changes.get(i) {
            Some(c) if !c.is_tombstone() => Some(i),
            _ => None,
        }
    }

    /// Drops every change at or below `at` except the one [`kept_at`]
    /// names; returns the dropped changes' footprint and count. An empty
    /// index afterwards means the key is gone from the key space entirely.
    ///
    /// [`kept_at`]: KeyIndex::kept_at
    pub(crate) fn compact(&mut self, at: i64) -> (u64, usize) {
        let n = self.changes().partition_point(|c| c.main <= at);
        let drop_to = match self.kept_at(at) {
            Some(i) => i,
            None => n,
        };
        if drop_to == 0 {
            return (0, 0);
        }
        self.history.edit(|v| {
            let freed: u64 = v.drain(..drop_to).map(|c| c.footprint()).sum();
            v.shrink_to_fit();
            (freed, drop_to)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(main: i64, create: i64, version: i64, value: &[u8]) -> Change {
        Change {
            main,
            create,
            version,
            lease: 0,
            sub: 0,
            value: value.into(),
        }
    }

    fn index(changes: Vec<Change>) -> KeyIndex {
        let mut ki = KeyIndex::default();
        for c in changes {
            ki.push(c);
        }
        ki
    }

    #[test]
    fn reads_at_revision_follow_generations() {
        // put@2, put@3, del@4, put@6
        let ki = index(vec![
            put(2, 2, 1, b"a"),
            put(3, 2, 2, b"b"),
            Change::tombstone(Revision::new(4, 0)),
            put(6, 6, 1, b"c"),
        ]);
        assert!(ki.at(1).is_none());
        assert_eq!(ki.at(2).map(|c| c.version), Some(1));
        assert_eq!(ki.at(3).map(|c| &*c.value), Some(&b"b"[..]));
        assert!(ki.at(4).is_none());
        assert!(ki.at(5).is_none());
        assert_eq!(ki.at(6).map(|c| c.create), Some(6));
        assert_eq!(ki.latest().map(|c| c.main), Some(6));
    }

    #[test]
    fn compaction_keeps_newest_live_revision_and_drops_tombstones() {
        let mut ki = index(vec![
            put(2, 2, 1, b"a"),
            put(3, 2, 2, b"b"),
            Change::tombstone(Revision::new(4, 0)),
            put(6, 6, 1, b"c"),
        ]);
        assert_eq!(ki.compact(3).1, 1);
        assert_eq!(ki.changes()[0].main, 3);
        // The tombstone at 4 is the newest at or below 5: it and everything
        // before it goes.
        assert_eq!(ki.compact(5).1, 2);
        assert_eq!(ki.changes().len(), 1);
        assert_eq!(ki.changes()[0].main, 6);
        // Compacting again above the only change keeps it.
        assert_eq!(ki.compact(9), (0, 0));
        assert_eq!(ki.changes().len(), 1);
    }

    #[test]
    fn compaction_of_a_deleted_key_empties_it() {
        let mut ki = index(vec![
            put(2, 2, 1, b"a"),
            Change::tombstone(Revision::new(3, 0)),
        ]);
        ki.compact(3);
        assert!(ki.is_empty());
    }

    #[test]
    fn prev_of_a_change_is_the_live_value_before_it() {
        let ki = index(vec![
            put(2, 2, 1, b"a"),
            Change::tombstone(Revision::new(3, 0)),
            put(4, 4, 1, b"b"),
        ]);
        assert_eq!(ki.before(1).map(|c| c.main), Some(2));
        assert!(ki.before(2).is_none());
        assert!(ki.before(0).is_none());
        assert_eq!(ki.position(Revision::new(3, 0)), Some(1));
        assert_eq!(ki.position(Revision::new(3, 1)), None);
    }

    #[test]
    fn snapshot_histories_are_validated() {
        assert_eq!(KeyIndex::from_changes(vec![]), Err(HistoryError::Empty));
        assert_eq!(
            KeyIndex::from_changes(vec![put(3, 2, 2, b""), put(3, 2, 3, b"")]),
            Err(HistoryError::OutOfOrder)
        );
        assert_eq!(
            KeyIndex::from_changes(vec![put(3, 2, 2, b""), put(4, 2, 4, b"")]),
            Err(HistoryError::BadVersion)
        );
        let mut bad = Change::tombstone(Revision::new(5, 0));
        bad.lease = 7;
        assert_eq!(
            KeyIndex::from_changes(vec![bad]),
            Err(HistoryError::BadTombstone)
        );
        assert!(KeyIndex::from_changes(vec![put(3, 2, 2, b"x")]).is_ok());
    }

    #[test]
    fn change_packs_small() {
        assert!(std::mem::size_of::<Change>() <= 56);
        assert!(std::mem::size_of::<KeyIndex>() <= 64);
    }

    #[test]
    fn histories_move_between_inline_and_vec_forms() {
        let mut ki = KeyIndex::default();
        ki.push(put(2, 2, 1, b"a"));
        assert!(matches!(ki.history, History::One(_)));
        ki.push(put(3, 2, 2, b"b"));
        assert!(matches!(ki.history, History::Many(_)));
        assert_eq!(ki.pop().map(|c| c.main), Some(3));
        assert!(matches!(ki.history, History::One(_)));
        ki.push(put(3, 2, 2, b"b"));
        ki.push(put(4, 2, 3, b"c"));
        ki.compact(3);
        assert_eq!(ki.changes().len(), 2);
        ki.compact(4);
        assert!(matches!(ki.history, History::One(_)));
        assert_eq!(ki.changes()[0].main, 4);
        assert_eq!(ki.pop().map(|c| c.main), Some(4));
        assert!(ki.is_empty());
    }
}
