//! The in-memory view of the Raft log.
//!
//! Memory holds only a tail of the log: the entries not yet applied or not
//! yet handed to the driver to persist, plus at most
//! `Config::catch_up_entries` applied ones before them, for followers that
//! are a little behind (`trim_to`). Everything older is in the driver's
//! WAL and its newest snapshot; a follower that needs it gets a snapshot
//! (etcd 3.6's `SnapshotCatchUpEntries`, for the same reason: the state
//! is in memory already, a second copy of recent values in the log is
//! not wanted). Snapshots (`compact`) no longer drop entries themselves.
//! Indices partition like this:
//!
//! ```text
//!  offset < first_index ..= persisted ..= handed ..= last_index
//!                 applied <= committed <= last_index
//!  snapshot.index <= offset (or no snapshot)
//! ```
//!
//! - `handed`: entries up to here were given to the driver to persist; the
//!   rest go into the next `Ready`.
//! - `persisted`: the driver acknowledged these as durable. Only this counts
//!   toward the leader's own vote in the commit quorum.
//! - `applied`: committed entries handed to the driver to apply. Entries may
//!   be applied from memory before they are locally durable: committed means
//!   a quorum has them durable.
//!
//! Invariant: entries are contiguous, terms never decrease, and an entry at
//! or below `committed` is never truncated (a message asking for that is
//! rejected, not obeyed).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::wire::raft::{Entry, SnapshotMeta};

/// A snapshot: the meta plus the state machine's opaque bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub data: Image,
}

/// A snapshot's image: the state machine's bytes, shared and never
/// changed. Where they live is the driver's business: in memory (an image
/// a follower received), or a range of the snapshot file a member saved,
/// mapped, so the member keeps no copy of its state on the heap to send.
#[derive(Clone)]
pub struct Image(Arc<dyn AsRef<[u8]> + Send + Sync>);

impl Image {
    pub fn new(bytes: impl AsRef<[u8]> + Send + Sync + 'static) -> Image {
        Image(Arc::new(bytes))
    }
}

impl Default for Image {
    fn default() -> Image {
        Image::new(Vec::new())
    }
}

impl std::ops::Deref for Image {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

impl From<Vec<u8>> for Image {
    fn from(bytes: Vec<u8>) -> Image {
        Image::new(bytes)
    }
}

impl PartialEq for Image {
    fn eq(&self, other: &Image) -> bool {
        **self == **other
    }
}

impl Eq for Image {}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Image({} bytes)", self.len())
    }
}

#[derive(Debug)]
pub(crate) struct RaftLog {
    /// The index just before the first entry in memory, and its term: the
    /// newest snapshot's at start or after installing one, then where the
    /// tail was last trimmed.
    pub offset: u64,
    pub offset_term: u64,
    entries: VecDeque<Entry>,
    pub committed: u64,
    pub applied: u64,
    pub persisted: u64,
    pub handed: u64,
    /// The newest snapshot, kept to send to followers behind `first_index`
    /// (its image may be missing: see `Raft::image_missing`).
    pub snapshot: Option<Snapshot>,
    /// A snapshot received from the leader, not yet handed to the driver.
    pub pending_snapshot: Option<Snapshot>,
}

pub(crate) fn entry_size(e: &Entry) -> u64 {
    e.data.len() as u64 + 24
}

impl RaftLog {
    /// A log restored from durable state: everything in it is persisted.
    pub fn restore_from(snapshot: Snapshot, entries: Vec<Entry>, commit: u64) -> Option<Self> {
        let offset = snapshot.meta.index;
        for (i, e) in entries.iter().enumerate() {
            if e.index != offset + 1 + i as u64 {
                return None;
            }
        }
        let last = offset + entries.len() as u64;
        let committed = commit.clamp(offset, last);
        Some(RaftLog {
            offset,
            offset_term: snapshot.meta.term,
            entries: entries.into(),
            committed,
            applied: offset,
            persisted: last,
            handed: last,
            snapshot: if offset > 0 { Some(snapshot) } else { None },
            pending_snapshot: None,
        })
    }

    pub fn first_index(&self) -> u64 {
        self.offset + 1
    }

    pub fn last_index(&self) -> u64 {
        self.offset + self.entries.len() as u64
    }

    pub fn last_term(&self) -> u64 {
        self.entries.back().map_or(self.offset_term, |e| e.term)
    }

    /// Term of the entry at `i`, or `None` if compacted away or not there.
    pub fn term(&self, i: u64) -> Option<u64> {
        if i == self.offset {
            return Some(self.offset_term);
        }
        if i < self.offset || i > self.last_index() {
            return None;
        }
        self.entries.get(self.pos(i - 1)).map(|e| e.term)
    }

    pub fn entry(&self, i: u64) -> Option<&Entry> {
        if i <= self.offset {
            return None;
        }
        self.entries.get(self.pos(i - 1))
    }

    /// How many entries of `entries` are at or below index `i` (which is
    /// at least `offset`): the position of entry `i + 1`. An index
    /// from a message may be far past the log; on a 32-bit target such a
    /// distance does not fit a `usize` and maps to `usize::MAX` (past every
    /// entry) instead of wrapping onto a real one.
    fn pos(&self, i: u64) -> usize {
        usize::try_from(i.saturating_sub(self.offset)).unwrap_or(usize::MAX)
    }

    pub fn match_term(&self, i: u64, t: u64) -> bool {
        self.term(i) == Some(t)
    }

    /// The election restriction: is a log ending at `(index, term)` at least
    /// as up to date as ours?
    pub fn is_up_to_date(&self, index: u64, term: u64) -> bool {
        term > self.last_term() || (term == self.last_term() && index >= self.last_index())
    }

    /// Entries from `lo` on, at most `max_bytes` of them (but at least one).
    /// `None` if `lo` is compacted.
    pub fn entries_from(&self, lo: u64, max_bytes: u64) -> Option<Vec<Entry>> {
        if lo <= self.offset {
            return None;
        }
        let mut out = Vec::new();
        let mut size = 0;
        let start = self.pos(lo - 1);
        for e in self.entries.iter().skip(start) {
            size += entry_size(e);
            if !out.is_empty() && size > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        Some(out)
    }

    /// Follower append: the leader's entries follow `(prev_index,
    /// prev_term)`. Returns the index of the last new entry on success,
    /// `None` if the log does not match at `prev_index`, and `Err` if the
    /// message is malformed or would truncate committed entries.
    pub fn maybe_append(
        &mut self,
        prev_index: u64,
        prev_term: u64,
        mut entries: Vec<Entry>,
    ) -> Result<Option<u64>, ()> {
        for (i, e) in entries.iter().enumerate() {
            if e.index != prev_index + 1 + i as u64 || e.term < prev_term {
                return Err(());
            }
            if i > 0 && e.term < entries[i - 1].term {
                return Err(());
            }
        }
        if !self.match_term(prev_index, prev_term) {
            // Below the snapshot, prev is committed; the caller handles that.
            return Ok(None);
        }
        let last_new = prev_index + entries.len() as u64;
        // First entry that is new or conflicts.
        let mut start = entries.len();
        for (i, e) in entries.iter().enumerate() {
            match self.term(e.index) {
                Some(t) if t == e.term => continue,
                Some(_) if e.index <= self.committed => return Err(()),
                _ => {
                    start = i;
                    break;
                }
            }
        }
        if start < entries.len() {
            self.append(entries.drain(start..));
        }
        Ok(Some(last_new))
    }

    /// Appends entries (moved, not copied), truncating any conflicting
    /// suffix first. The caller guarantees the first index is in
    /// `(committed, last_index + 1]` and the rest follow it.
    pub fn append(&mut self, ents: impl Iterator<Item = Entry>) {
        let mut ents = ents.peekable();
        let Some(first) = ents.peek() else { return };
        let after = first.index - 1;
        if after < self.last_index() {
            self.entries.truncate(self.pos(after));
            self.persisted = self.persisted.min(after);
            self.handed = self.handed.min(after);
        }
        self.entries.extend(ents);
    }

    pub fn push(&mut self, e: Entry) {
        self.entries.push_back(e);
    }

    /// Fast backtracking: the last index at or below `index` whose term is
    /// at most `term`, with that term.
    pub fn find_conflict_by_term(&self, index: u64, term: u64) -> (u64, u64) {
        let mut i = index.min(self.last_index());
        loop {
            match self.term(i) {
                Some(t) if t > term && i > self.offset => i -= 1,
                Some(t) => return (i, t),
                None => return (i, 0),
            }
        }
    }

    pub fn commit_to(&mut self, i: u64) {
        let i = i.min(self.last_index());
        if i > self.committed {
            self.committed = i;
        }
    }

    /// Entries not yet handed to the driver for persistence; marks them
    /// handed.
    pub fn take_unpersisted(&mut self) -> Vec<Entry> {
        let last = self.last_index();
        if self.handed >= last {
            return Vec::new();
        }
        let from = self.handed.max(self.offset);
        let out = self.entries.iter().skip(self.pos(from)).cloned().collect();
        self.handed = last;
        out
    }

    pub fn has_unpersisted(&self) -> bool {
        self.handed < self.last_index()
    }

    pub fn has_next_committed(&self) -> bool {
        self.committed > self.applied && self.pending_snapshot.is_none()
    }

    /// Committed entries not yet handed out for applying, up to `max_bytes`.
    pub fn take_committed(&mut self, max_bytes: u64) -> Vec<Entry> {
        if !self.has_next_committed() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut size = 0;
        for i in self.applied + 1..=self.committed {
            let Some(e) = self.entry(i) else { break };
            size += entry_size(e);
            if !out.is_empty() && size > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        if let Some(e) = out.last() {
            self.applied = e.index;
        }
        out
    }

    /// The driver made entries up to `(index, term)` durable. Ignored if the
    /// log changed at `index` since (the write was superseded).
    pub fn persisted_to(&mut self, index: u64, term: u64) -> bool {
        if index <= self.persisted || index > self.handed {
            return false;
        }
        if index > self.offset && !self.match_term(index, term) {
            return false;
        }
        self.persisted = index;
        true
    }

    /// Replace everything with a snapshot received from the leader. Its
    /// image goes to the driver only (`pending_snapshot`): this member keeps
    /// the meta, and takes a snapshot of its own should it lead and a
    /// follower need one.
    pub fn restore(&mut self, snap: Snapshot) {
        self.offset = snap.meta.index;
        self.offset_term = snap.meta.term;
        self.entries.clear();
        self.committed = snap.meta.index;
        self.applied = snap.meta.index;
        self.persisted = self.persisted.min(snap.meta.index);
        self.handed = snap.meta.index;
        self.snapshot = Some(Snapshot {
            meta: snap.meta.clone(),
            data: Image::default(),
        });
        self.pending_snapshot = Some(snap);
    }

    /// Records a newer snapshot (or the image of the current one) to send
    /// to followers behind `first_index`. Entries stay: `trim_to` alone
    /// drops them.
    pub fn compact(&mut self, snap: Snapshot) {
        self.snapshot = Some(snap);
    }

    /// Index of the newest snapshot (0 with none).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.meta.index)
    }

    /// Drops the entries up to `through` from memory, never one not yet
    /// applied or not yet handed to the driver to persist (those are in
    /// its WAL, or on their way there, and covered by its snapshots).
    pub fn trim_to(&mut self, through: u64) {
        let through = through.min(self.applied).min(self.handed);
        if through <= self.offset {
            return;
        }
        let Some(term) = self.term(through) else {
            return;
        };
        let n = self.pos(through);
        self.entries.drain(..n.min(self.entries.len()));
        self.offset = through;
        self.offset_term = term;
        if self.entries.capacity() > 2 * self.entries.len().max(1024) {
            // A burst once grew the ring; memory follows the tail back down.
            self.entries.shrink_to(self.entries.len().max(1024));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    fn log_with(terms: &[u64]) -> RaftLog {
        let ents = terms
            .iter()
            .enumerate()
            .map(|(i, &t)| ent(i as u64 + 1, t))
            .collect();
        RaftLog::restore_from(Snapshot::default(), ents, 0).unwrap()
    }

    #[test]
    fn append_truncates_conflicts_but_never_committed() {
        let mut l = log_with(&[1, 1, 2, 2]);
        l.committed = 2;
        assert_eq!(l.maybe_append(2, 1, vec![ent(3, 3)]), Ok(Some(3)));
        assert_eq!(l.last_index(), 3);
        assert_eq!(l.persisted, 2);
        assert_eq!(l.maybe_append(1, 1, vec![ent(2, 5)]), Err(()));
        assert_eq!(l.maybe_append(3, 2, vec![]), Ok(None));
        // Duplicates are no-ops.
        assert_eq!(l.maybe_append(1, 1, vec![ent(2, 1)]), Ok(Some(2)));
        assert_eq!(l.last_index(), 3);
    }

    /// `persisted` covers only entries still in the log: a conflict
    /// lowers it, and a write of replaced entries that completes late is
    /// not counted (the follower's commit inference relies on both).
    #[test]
    fn persisted_never_covers_a_replaced_entry() {
        let mut l = log_with(&[1]);
        l.persisted = 0;
        l.handed = 0;
        l.append([ent(2, 1), ent(3, 1)].into_iter());
        assert_eq!(l.take_unpersisted().len(), 3);
        // The write of 1..=3 (term 1) is in flight; 2..=3 are replaced.
        assert_eq!(l.maybe_append(1, 1, vec![ent(2, 2)]), Ok(Some(2)));
        assert_eq!(l.take_unpersisted(), vec![ent(2, 2)]);
        assert!(!l.persisted_to(3, 1), "index 3 is gone");
        assert_eq!(l.persisted, 0);
        assert!(l.persisted_to(2, 2));
        assert_eq!(l.persisted, 2);
        // Replacing what is durable lowers `persisted` at once.
        l.append([ent(3, 2)].into_iter());
        let _ = l.take_unpersisted();
        assert!(l.persisted_to(3, 2));
        assert_eq!(l.maybe_append(1, 1, vec![ent(2, 3)]), Ok(Some(2)));
        assert_eq!(l.persisted, 1);
        assert!(!l.persisted_to(2, 2), "the old entry 2's write");
        assert!(!l.persisted_to(3, 2));
    }

    #[test]
    fn find_conflict_by_term_skips_higher_terms() {
        let l = log_with(&[1, 1, 4, 4, 5]);
        assert_eq!(l.find_conflict_by_term(5, 3), (2, 1));
        assert_eq!(l.find_conflict_by_term(9, 5), (5, 5));
        assert_eq!(l.find_conflict_by_term(5, 0), (0, 0));
    }
}
