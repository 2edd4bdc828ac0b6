//! The revisioned key space: an ordered index of keys, each with its kept
//! history, plus a revision-ordered log of changes for watch catch-up.
//!
//! Invariants:
//! - `current` is the newest main revision; every kept change has
//!   `main <= current`. A fresh store is at revision 1, like etcd.
//! - `compacted` is etcd's `compactMainRev`: -1 until the first compaction.
//!   Reads below it fail with [`MvccError::Compacted`]; at or above it they
//!   see exactly what they saw before compaction.
//! - `log` holds one entry per kept change with `main >= compacted`, in
//!   revision order; each entry names a change that its key's index still
//!   holds. Changes below that are needed only for reads at the compaction
//!   point, which go through the key index.
//! - A key is in `keys` while it has at least one kept change; compaction
//!   drops keys whose history is all tombstoned.
//! - `size` is the running estimate [`Store::size_bytes`] reports; every
//!   mutation adjusts it in the same step.
//! - `encoded_keys` is the exact byte count of the keys' entries in the
//!   snapshot encoding (each key with its kept changes), kept the same way,
//!   so a snapshot knows its length without walking the key space
//!   ([`KeySpaceImage::encoded_len`]).
//!
//! Writes go straight into the maps as they are made, under a
//! [`PendingRevision`] that hands out sub revisions; a request that fails
//! after it started changing things is undone by [`Store::rollback`] (which
//! pops the log's tail), so no error ever leaves half a revision behind.
//!
//! Both structures are persistent (the key map is `key_map`'s B+ tree,
//! the log an `imbl::Vector`): cloning a `Store` is O(1) and shares
//! structure, so a snapshot can serialize a clone while writes continue.
//! Memory per key is what decides which boards qed fits, so each piece is
//! thin: a change is one [`ChangeRef`] block (varint fields, key, value)
//! shared by the key's index and the log, which holds nothing but those
//! 8-byte pointers; a key's index is the change itself while it has one,
//! and the key map's leaves hold just the indexes (the key is read from
//! the change), so a key with one change costs one allocation of little
//! more than its key and value, plus ~17 bytes of slots.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;

use imbl::Vector;
use serde::de::Error as _;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::backing::{BackedSource, Backing};
use super::key_index::{varint_len, Change, ChangeRef, KeyIndex, TooLarge};
use super::key_map::KeyMap;
use super::revision::Revision;
use super::txn::{self, DEFAULT_MAX_TXN_OPS};
use super::MvccError;
use qed_wire::kv::{
    DeleteRangeRequest, DeleteRangeResponse, Event, EventType, KeyValue, PutRequest, PutResponse,
    RangeRequest, RangeResponse, ResponseHeader, SortOrder, SortTarget, TxnRequest, TxnResponse,
};

/// Estimated fixed bytes per key besides its bytes (added on top; they
/// stand for the separator copies in the map's branches): the map slot
/// (the index), counted twice because a leaf may be half full, plus 16
/// for the leaves' and branches' own headers. Measured
/// (`tests/mvcc_memory.rs`) below this with every change counted by
/// [`ChangeRef::footprint`] and [`LOG_ENTRY_BYTES`]: the estimate stays on
/// the safe side of the real figure, as the quota needs.
const KEY_OVERHEAD: u64 = (2 * std::mem::size_of::<KeyIndex>() + 16) as u64;
/// Per change kept in the log: its pointer there (64 to a node, rounded
/// up to 16), and in a key with several changes its slot in the history's
/// vector (up to twice 8 bytes as the vector doubles) and its share of the
/// vector's shared header (48 bytes over at least two changes), plus 8
/// to spare.
const LOG_ENTRY_BYTES: u64 = 16 + 16 + 24 + 8;

/// A write in progress: the main revision it will commit as, the next sub
/// revision, and the events produced so far.
#[derive(Debug)]
pub(crate) struct PendingRevision {
    pub(crate) main: i64,
    next_sub: u32,
    events: Vec<Event>,
}

impl PendingRevision {
    pub(crate) fn changed(&self) -> bool {
        self.next_sub > 0
    }

    /// The revision reads inside this write see: its own changes once it
    /// has made any (etcd's `storeTxnWrite.Range`).
    pub(crate) fn read_rev(&self) -> i64 {
        if self.changed() {
            self.main
        } else {
            self.main - 1
        }
    }

    /// What a response header reports: the new revision if anything
    /// changed, else the unchanged current one.
    pub(crate) fn header_rev(&self) -> i64 {
        self.read_rev()
    }

    fn take_sub(&mut self) -> u32 {
        let sub = self.next_sub;
        // A request would need four billion changes to wrap; saturate rather
        // than panic.
        self.next_sub = self.next_sub.saturating_add(1);
        sub
    }
}

/// etcd v3's MVCC key space as a pure state machine.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) keys: KeyMap,
    pub(crate) log: Vector<ChangeRef>,
    pub(crate) current: i64,
    pub(crate) compacted: i64,
    pub(crate) size: u64,
    /// See the module doc.
    encoded_keys: u64,
    pub(crate) max_txn_ops: usize,
}

/// A key space as a snapshot image holds it, and the bytes its encoding
/// takes (the image states that length before the key space).
pub trait KeySpaceImage: Serialize {
    fn encoded_len(&self) -> postcard::Result<usize>;
}

impl KeySpaceImage for Store {
    /// O(1): from the running count.
    fn encoded_len(&self) -> postcard::Result<usize> {
        let zigzag = |v: i64| ((v << 1) ^ (v >> 63)) as u64;
        let len = varint_len(zigzag(self.current))
            + varint_len(zigzag(self.compacted))
            + varint_len(self.keys.len() as u64)
            + self.encoded_keys;
        usize::try_from(len).map_err(|_| postcard::Error::SerializeBufferFull)
    }
}

impl<K: AsRef<[u8]>> KeySpaceImage for Histories<K> {
    /// Walks the histories (a restore, once).
    fn encoded_len(&self) -> postcard::Result<usize> {
        qed_wire::frame::encoded_len(self)
    }
}

/// Bytes of a key's entry in the snapshot encoding, but for its changes'
/// own: the key and the count of its changes.
fn key_entry_len(key_len: usize, changes: usize) -> u64 {
    varint_len(key_len as u64) + key_len as u64 + varint_len(changes as u64)
}

/// What one more change (the `n`th, from 1) adds to its key's entry:
/// itself and the count's growth.
fn change_entry_len(change: &ChangeRef, n: usize) -> u64 {
    change.encoded_len() + varint_len(n as u64) - varint_len(n.saturating_sub(1) as u64)
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

/// Where a range request's `range_end` says to stop.
pub(crate) enum RangeEnd<'a> {
    /// Just the key (empty `range_end`).
    Single,
    /// Every key `>= key` (`range_end` is `[0]`).
    Unbounded,
    /// Up to, not including, this key.
    Before(&'a [u8]),
}

impl<'a> RangeEnd<'a> {
    pub(crate) fn parse(range_end: &'a [u8]) -> RangeEnd<'a> {
        match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Unbounded,
            end => RangeEnd::Before(end),
        }
    }

    pub(crate) fn contains(&self, start: &[u8], key: &[u8]) -> bool {
        match self {
            RangeEnd::Single => key == start,
            RangeEnd::Unbounded => key >= start,
            RangeEnd::Before(end) => key >= start && key < *end,
        }
    }
}

impl Store {
    pub fn new() -> Store {
        Store {
            keys: KeyMap::new(),
            log: Vector::new(),
            current: 1,
            compacted: -1,
            size: 0,
            encoded_keys: 0,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
        }
    }

    /// etcd's `--max-txn-ops` (default 128): the most compares, or ops in
    /// one branch, a txn may carry. Configuration, not state: it is not
    /// part of a snapshot, so set it again after [`Store::from_bytes`].
    pub fn set_max_txn_ops(&mut self, max: usize) {
        self.max_txn_ops = max;
    }

    /// The newest main revision (1 on a fresh store).
    pub fn revision(&self) -> i64 {
        self.current
    }

    /// The revision of the last compaction, 0 if there was none.
    pub fn compact_revision(&self) -> i64 {
        self.compacted.max(0)
    }

    /// Estimated in-memory bytes of the key space and its history: what
    /// `--quota-backend-bytes` is measured against.
    pub fn size_bytes(&self) -> u64 {
        self.size
    }

    /// Number of keys with kept history (live or not yet compacted away).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Iterates the key indexes over `[start, end)` as `range_end` encodes
    /// it.
    pub(crate) fn scan<'a>(
        &'a self,
        start: &'a [u8],
        range_end: &'a [u8],
    ) -> Box<dyn Iterator<Item = &'a KeyIndex> + 'a> {
        match RangeEnd::parse(range_end) {
            RangeEnd::Single => Box::new(self.keys.get(start).into_iter()),
            RangeEnd::Unbounded => {
                Box::new(self.keys.range(Bound::Included(start), Bound::Unbounded))
            }
            // An end at or before the start is an empty range, as in etcd.
            RangeEnd::Before(end) if end <= start => Box::new(std::iter::empty()),
            RangeEnd::Before(end) => Box::new(
                self.keys
                    .range(Bound::Included(start), Bound::Excluded(end)),
            ),
        }
    }

    /// etcd's `rangeKeys` plus `applyRange`: reads as of `req.revision`
    /// (or `read_rev`, the caller's view of "now", when that is 0 or less).
    /// The header carries `read_rev`, as etcd's does, not the revision read.
    pub(crate) fn range_at(
        &self,
        req: &RangeRequest,
        read_rev: i64,
    ) -> Result<RangeResponse, MvccError> {
        let mut rev = req.revision;
        if rev > read_rev {
            return Err(MvccError::FutureRev);
        }
        if rev <= 0 {
            rev = read_rev;
        }
        if rev < self.compacted {
            return Err(MvccError::Compacted);
        }

        // Sorting or filtering needs every match; otherwise fetch one past
        // the limit so `more` can be told.
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        let fetch = if req.sort_order != SortOrder::None || filtered || req.limit <= 0 {
            usize::MAX
        } else {
            usize::try_from(req.limit)
                .unwrap_or(usize::MAX)
                .saturating_add(1)
        };

        let mut count: i64 = 0;
        let mut kvs = Vec::new();
        for index in self.scan(&req.key, &req.range_end) {
            let Some(change) = index.at(rev) else {
                continue;
            };
            count += 1;
            if !req.count_only && kvs.len() < fetch {
                kvs.push(change.to_kv());
            }
        }

        // Filters apply after fetching and do not change `count`, exactly as
        // in etcd's applyRange.
        if req.max_mod_revision != 0 {
            kvs.retain(|kv| kv.mod_revision <= req.max_mod_revision);
        }
        if req.min_mod_revision != 0 {
            kvs.retain(|kv| kv.mod_revision >= req.min_mod_revision);
        }
        if req.max_create_revision != 0 {
            kvs.retain(|kv| kv.create_revision <= req.max_create_revision);
        }
        if req.min_create_revision != 0 {
            kvs.retain(|kv| kv.create_revision >= req.min_create_revision);
        }

        sort_kvs(&mut kvs, req.sort_order, req.sort_target);

        let mut more = false;
        if req.limit > 0 {
            let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
            if kvs.len() > limit {
                kvs.truncate(limit);
                more = true;
            }
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value = Vec::new();
            }
        }
        Ok(RangeResponse {
            header: header(read_rev),
            kvs,
            more,
            count,
        })
    }

    /// Reads a range, at `req.revision` or now.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        if req.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        self.range_at(req, self.current)
    }

    /// Writes one key. `lease_exists` answers whether a lease ID is granted
    /// (the lessor lives outside this module).
    pub fn put(
        &mut self,
        req: &PutRequest,
        lease_exists: &dyn Fn(i64) -> bool,
    ) -> Result<(PutResponse, Vec<Event>), MvccError> {
        txn::check_put(req)?;
        // etcd looks the lease up before anything else at apply time.
        if req.lease != 0 && !lease_exists(req.lease) {
            return Err(MvccError::LeaseNotFound);
        }
        let mut pending = self.begin();
        match self.apply_put(&mut pending, req) {
            Ok(resp) => Ok((resp, self.commit(pending))),
            Err(e) => {
                self.rollback(pending);
                Err(e)
            }
        }
    }

    /// Deletes `[key, range_end)`. Deleting nothing does not bump the
    /// revision.
    pub fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<(DeleteRangeResponse, Vec<Event>), MvccError> {
        if req.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        let mut pending = self.begin();
        let resp = self.apply_delete(&mut pending, req);
        Ok((resp, self.commit(pending)))
    }

    /// Runs a txn: compares, then one branch, as one revision.
    pub fn txn(
        &mut self,
        req: &TxnRequest,
        lease_exists: &dyn Fn(i64) -> bool,
    ) -> Result<(TxnResponse, Vec<Event>), MvccError> {
        txn::check_txn(req, self.max_txn_ops)?;
        let path = txn::prepare(self, req, lease_exists)?;
        let mut pending = self.begin();
        match txn::apply(self, &mut pending, req, &path) {
            Ok(mut resp) => {
                resp.header.revision = pending.header_rev();
                Ok((resp, self.commit(pending)))
            }
            Err(e) => {
                self.rollback(pending);
                Err(e)
            }
        }
    }

    /// Deletes every listed key that exists, all in one revision, with no
    /// limit on how many (a lease revoke deletes all its keys at once,
    /// beyond the txn op limit). Returns the delete events, in the order of
    /// `keys`; no existing key means no new revision and no events.
    pub fn delete_keys(&mut self, keys: &[Vec<u8>]) -> Vec<Event> {
        let mut pending = self.begin();
        for key in keys.iter().filter(|k| !k.is_empty()) {
            let req = DeleteRangeRequest {
                key: key.clone(),
                ..DeleteRangeRequest::default()
            };
            self.apply_delete(&mut pending, &req);
        }
        self.commit(pending)
    }

    /// Runs a read-only txn (only ranges, no nested txns, as etcd's
    /// `isTxnReadonly` defines it) without `&mut`: for serializable reads
    /// from a shared view. Refuses a txn that could write.
    pub fn txn_read_only(&self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        if !txn::is_read_only(req) {
            return Err(MvccError::NotReadOnly);
        }
        // A clone is O(1) and nothing is written to it.
        let mut view = self.clone();
        view.txn(req, &|_| false).map(|(resp, _)| resp)
    }

    pub(crate) fn begin(&self) -> PendingRevision {
        PendingRevision {
            main: self.current.saturating_add(1),
            next_sub: 0,
            events: Vec::new(),
        }
    }

    pub(crate) fn commit(&mut self, pending: PendingRevision) -> Vec<Event> {
        if pending.changed() {
            self.current = pending.main;
        }
        pending.events
    }

    /// Undoes every change `pending` made: they are the log's tail.
    pub(crate) fn rollback(&mut self, pending: PendingRevision) {
        while self.log.back().is_some_and(|c| c.main() == pending.main) {
            let Some(change) = self.log.pop_back() else {
                break;
            };
            self.size = self.size.saturating_sub(LOG_ENTRY_BYTES);
            let key = change.key();
            let mut gone = false;
            if let Some(index) = self.keys.get_mut(key) {
                let n = index.changes().len();
                let (popped, only) = index.pop();
                self.size = self.size.saturating_sub(popped.footprint());
                self.encoded_keys = self
                    .encoded_keys
                    .saturating_sub(change_entry_len(&popped, n));
                gone = only;
            }
            if gone {
                self.keys.remove(key);
                self.size = self.size.saturating_sub(KEY_OVERHEAD + key.len() as u64);
                // A key's entry with no changes: what its last one left.
                self.encoded_keys = self
                    .encoded_keys
                    .saturating_sub(key_entry_len(key.len(), 0));
            }
        }
    }

    /// Appends `change` (a change of its own key) to that key's history
    /// and to the log.
    fn record(&mut self, change: ChangeRef) {
        let pushed = push_change(self.keys.get_mut_to_write(change.key()), &change);
        self.file_and_count(pushed, change);
    }

    /// Files `change` as a new key's first unless [`push_change`] already
    /// added it to its key's index (`pushed`: the key's change count
    /// then), and keeps the books ([`Store::log_and_count`]).
    fn file_and_count(&mut self, pushed: Option<usize>, change: ChangeRef) {
        let n = match pushed {
            Some(n) => n,
            None => {
                self.keys.insert(KeyIndex::new(change.clone()));
                1
            }
        };
        self.log_and_count(change, n);
    }

    /// The bookkeeping of a change just filed as the `n`th (from 1; 1 is
    /// a new key) of its key's history: the log, `size`, `encoded_keys`.
    fn log_and_count(&mut self, change: ChangeRef, n: usize) {
        self.size += change.footprint() + LOG_ENTRY_BYTES;
        self.encoded_keys += change_entry_len(&change, n);
        if n == 1 {
            let key_len = change.key().len();
            self.size += KEY_OVERHEAD + key_len as u64;
            self.encoded_keys += key_entry_len(key_len, 0);
        }
        self.log.push_back(change);
    }

    pub(crate) fn latest(&self, key: &[u8]) -> Option<&ChangeRef> {
        self.keys.get(key).and_then(|index| index.latest())
    }

    /// etcd's applierV3backend.Put after the lease check.
    pub(crate) fn apply_put(
        &mut self,
        pending: &mut PendingRevision,
        req: &PutRequest,
    ) -> Result<PutResponse, MvccError> {
        // One search: the key's index, writable (a put changes it, or
        // inserts down the same path).
        let index = self.keys.get_mut_to_write(&req.key);
        let prev = index.as_deref().and_then(KeyIndex::latest).cloned();
        let prev_view = prev.as_ref().map(ChangeRef::view);
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        let value: &[u8] = match (&prev_view, req.ignore_value) {
            (Some(p), true) => p.value,
            _ => &req.value,
        };
        let lease = match (&prev_view, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        let sub = pending.take_sub();
        let (create, version) = match &prev_view {
            Some(p) => (p.create, p.version.saturating_add(1)),
            None => (pending.main, 1),
        };
        let change = ChangeRef::new(
            &req.key,
            Revision::new(pending.main, sub),
            create,
            version,
            lease,
            value,
        )
        .map_err(|TooLarge| too_large())?;
        let kv = change.to_kv();
        // `record`, with the index found above.
        let pushed = push_change(index, &change);
        self.file_and_count(pushed, change);
        let prev_kv = prev.map(|p| p.to_kv());
        let resp = PutResponse {
            header: header(pending.main),
            prev_kv: if req.prev_kv { prev_kv.clone() } else { None },
        };
        pending.events.push(Event {
            kind: EventType::Put,
            kv,
            prev_kv,
        });
        Ok(resp)
    }

    /// etcd's applierV3backend.DeleteRange: tombstones every live key in
    /// the range.
    pub(crate) fn apply_delete(
        &mut self,
        pending: &mut PendingRevision,
        req: &DeleteRangeRequest,
    ) -> DeleteRangeResponse {
        let live: Vec<ChangeRef> = self
            .scan(&req.key, &req.range_end)
            .filter_map(|index| index.latest().cloned())
            .collect();
        let mut prev_kvs = Vec::new();
        for prev in &live {
            let sub = pending.take_sub();
            // A tombstone is smaller than the change it follows, so it
            // always fits.
            let Ok(tomb) = ChangeRef::tombstone(prev.key(), Revision::new(pending.main, sub))
            else {
                continue;
            };
            let kv = tomb.to_kv();
            self.record(tomb);
            let prev_kv = prev.to_kv();
            if req.prev_kv {
                prev_kvs.push(prev_kv.clone());
            }
            pending.events.push(Event {
                kind: EventType::Delete,
                kv,
                prev_kv: Some(prev_kv),
            });
        }
        DeleteRangeResponse {
            header: header(pending.header_rev()),
            deleted: live.len() as i64,
            prev_kvs,
        }
    }

    /// Forgets history at and below `revision`, keeping for each key the
    /// newest value at or below it unless that is a deletion.
    pub fn compact(&mut self, revision: i64) -> Result<(), MvccError> {
        if revision <= self.compacted {
            return Err(MvccError::Compacted);
        }
        if revision > self.current {
            return Err(MvccError::FutureRev);
        }
        self.compacted = revision;

        // Touch only keys that lose something, so a clone held by a
        // snapshot keeps sharing everything else. Those are among the keys
        // the log names at or below `revision`: a key with no change since
        // the last compaction kept at most one value then and has nothing
        // to lose now. So the work follows the history being dropped, not
        // the size of the key space (walking every key stalled apply).
        let candidates: BTreeSet<&[u8]> = self
            .log
            .iter()
            .take_while(|c| c.main() <= revision)
            .map(ChangeRef::key)
            .collect();
        let affected: Vec<Vec<u8>> = candidates
            .into_iter()
            .filter(|key| {
                self.keys
                    .get(key)
                    .is_some_and(|index| index.needs_compaction(revision))
            })
            .map(<[u8]>::to_vec)
            .collect();
        for key in affected {
            let mut gone = false;
            if let Some(index) = self.keys.get_mut(&key) {
                let before = index.changes().len();
                let done = index.compact(revision);
                let after = before.saturating_sub(done.count);
                self.size = self.size.saturating_sub(done.freed);
                self.encoded_keys = (self.encoded_keys + varint_len(after as u64))
                    .saturating_sub(done.encoded + varint_len(before as u64));
                gone = done.empty;
            }
            if gone {
                self.keys.remove(&key);
                self.size = self.size.saturating_sub(KEY_OVERHEAD + key.len() as u64);
                self.encoded_keys = self
                    .encoded_keys
                    .saturating_sub(key_entry_len(key.len(), 0));
            }
        }

        // The log keeps changes from the compaction point on; at exactly
        // that revision, only the ones compaction kept.
        let first_kept = self
            .log
            .binary_search_by(|c| {
                if c.main() < revision {
                    std::cmp::Ordering::Less
                } else {
                    std::cmp::Ordering::Greater
                }
            })
            .unwrap_or_else(|i| i);
        let mut rest = self.log.split_off(first_kept);
        let mut dropped = first_kept as u64;
        let mut head = Vector::new();
        while rest.front().is_some_and(|c| c.main() == revision) {
            let Some(change) = rest.pop_front() else {
                break;
            };
            let kept = self
                .keys
                .get(change.key())
                .is_some_and(|index| index.position(change.revision()).is_some());
            if kept {
                head.push_back(change);
            } else {
                dropped += 1;
            }
        }
        head.append(rest);
        self.log = head;
        self.size = self.size.saturating_sub(dropped * LOG_ENTRY_BYTES);
        Ok(())
    }

    /// History replay for watch catch-up: the changes to keys in
    /// `[key, range_end)` with revision `>= start_revision`, oldest first,
    /// each with `prev_kv` when the key existed before it.
    ///
    /// Stops once it holds at least `max_events` events (0: no limit) and
    /// the next event starts a new revision, so a revision is never split.
    /// Fails with `Compacted` if `start_revision` is below the compaction
    /// point (etcd's watcher rule: exactly at it is still served, with what
    /// compaction kept of that revision).
    pub fn events_since(
        &self,
        start_revision: i64,
        key: &[u8],
        range_end: &[u8],
        max_events: usize,
    ) -> Result<Vec<Event>, MvccError> {
        self.history_since(start_revision, key, range_end, max_events, 0)
            .map(|read| read.events)
    }

    /// [`Store::events_since`] with bounded work, for catch-up rounds that
    /// must not hold up the apply path: a single key is read from its own
    /// index (no log scan at all); a range scans the log from
    /// `start_revision`, stopping at a revision boundary once it visited
    /// `max_visits` log entries (0: no limit). The answer says through which
    /// revision the read is complete, so a caller resumes after it.
    pub fn history_since(
        &self,
        start_revision: i64,
        key: &[u8],
        range_end: &[u8],
        max_events: usize,
        max_visits: usize,
    ) -> Result<HistoryRead, MvccError> {
        if start_revision < self.compacted {
            return Err(MvccError::Compacted);
        }
        let end = RangeEnd::parse(range_end);
        if matches!(end, RangeEnd::Single) {
            return Ok(self.key_history_since(start_revision, key, max_events));
        }
        let from = self
            .log
            .binary_search_by(|c| {
                if c.main() < start_revision {
                    std::cmp::Ordering::Less
                } else {
                    std::cmp::Ordering::Greater
                }
            })
            .unwrap_or_else(|i| i);
        let mut read = HistoryRead {
            events: Vec::new(),
            through: self.current,
            visited: 0,
        };
        let mut last_main: Option<i64> = None;
        // `Vector::skip` is O(log n); `Iterator::skip` would walk the prefix.
        let tail = self.log.skip(from);
        for change in tail.iter() {
            let rev = change.revision();
            if let Some(last) = last_main.filter(|m| *m != rev.main) {
                let enough_events = max_events > 0 && read.events.len() >= max_events;
                let enough_visits = max_visits > 0 && read.visited >= max_visits;
                if enough_events || enough_visits {
                    read.through = last;
                    break;
                }
            }
            last_main = Some(rev.main);
            read.visited += 1;
            let changed = change.key();
            if !end.contains(key, changed) {
                continue;
            }
            let Some(index) = self.keys.get(changed) else {
                continue;
            };
            let Some(pos) = index.position(rev) else {
                continue;
            };
            if let Some(event) = event_at(index, pos) {
                read.events.push(event);
            }
        }
        Ok(read)
    }

    /// One key's history from `start_revision`, from its index (a key
    /// changes at most once per revision).
    fn key_history_since(&self, start_revision: i64, key: &[u8], max_events: usize) -> HistoryRead {
        let mut read = HistoryRead {
            events: Vec::new(),
            through: self.current,
            visited: 0,
        };
        let Some(index) = self.keys.get(key) else {
            return read;
        };
        let changes = index.changes();
        let first = changes.partition_point(|c| c.main() < start_revision);
        for (pos, change) in changes.iter().enumerate().skip(first) {
            if max_events > 0 && read.events.len() >= max_events {
                read.through = change.main() - 1;
                break;
            }
            read.visited += 1;
            read.events.extend(event_at(index, pos));
        }
        read
    }

    /// Encodes the whole store (postcard) for a snapshot.
    pub fn to_bytes(&self) -> Result<Vec<u8>, MvccError> {
        postcard::to_stdvec(self).map_err(|e| MvccError::Corrupt(e.to_string()))
    }

    /// Decodes what [`Store::to_bytes`] wrote, checking every invariant.
    pub fn from_bytes(bytes: &[u8]) -> Result<Store, MvccError> {
        postcard::from_bytes(bytes).map_err(|e| MvccError::Corrupt(e.to_string()))
    }

    /// Decodes what [`Store::to_bytes`] wrote from `source`, one value at a
    /// time: neither the whole encoding nor an intermediate copy of the
    /// key space is ever held (a restart loads a snapshot this way).
    pub(crate) fn decode_from(source: &mut impl ValueSource) -> Result<Store, MvccError> {
        let corrupt = MvccError::Corrupt;
        let revision: i64 = source.next_value().map_err(corrupt)?;
        let compact_revision: i64 = source.next_value().map_err(corrupt)?;
        let count: usize = source.next_value().map_err(corrupt)?;
        let mut failed = None;
        let keys = (0..count).map_while(|_| match source.next_key() {
            Ok((key, changes)) => Some((key, changes)),
            Err(e) => {
                failed = Some(e);
                None
            }
        });
        let built = Histories::new(revision, compact_revision, keys).map(Histories::into_store);
        if let Some(e) = failed {
            return Err(corrupt(e));
        }
        built.map_err(corrupt)
    }

    /// [`Store::from_bytes`] of the bytes at `range` in `backing`, leaving
    /// the values in the backing (see `backing`). As there, bytes after
    /// the store's encoding are not looked at.
    pub fn decode_backed(
        backing: Arc<Backing>,
        range: std::ops::Range<usize>,
    ) -> Result<Store, MvccError> {
        Store::decode_from(&mut BackedSource::new(backing, range))
    }

    /// Number of kept changes over all keys.
    pub fn history_len(&self) -> usize {
        self.keys.values().map(|index| index.changes().len()).sum()
    }

    /// Every key with its kept changes, in key order: what an etcd backend
    /// export writes.
    pub(crate) fn histories(&self) -> impl Iterator<Item = (&[u8], &[ChangeRef])> {
        self.keys.entries().map(|(k, index)| (k, index.changes()))
    }

    /// The store an image describes, checking every invariant (the image
    /// may come from a damaged file).
    fn from_image(image: Image) -> Result<Store, String> {
        let keys = image.keys.into_iter().map(|(KeyBytes(k), c)| (k, c));
        Ok(Histories::new(image.revision, image.compact_revision, keys)?.into_store())
    }
}

/// A key space as each key's kept changes in key order, checked against
/// every invariant a [`Store`] keeps, but not indexed yet: what an import
/// holds before it builds a store. It encodes as the same bytes the store
/// it becomes would, so a restore writes its snapshot image straight from
/// it, without building (and then freeing) the maps.
///
/// `K` is the form keys arrive in (borrowed from an etcd file, or read
/// from a snapshot); only the indexes are kept (each change holds its
/// key), so a restart holds no second copy of the keys.
#[derive(Debug, Clone)]
pub struct Histories<K> {
    revision: i64,
    compacted: i64,
    keys: Vec<KeyIndex>,
    _keys_as: std::marker::PhantomData<fn(K)>,
}

impl<K: AsRef<[u8]>> Histories<K> {
    /// Checks `keys` (each key's changes, keys in increasing order) as a
    /// store at `revision`, compacted at `compact_revision`.
    pub(crate) fn new(
        revision: i64,
        compact_revision: i64,
        keys: impl IntoIterator<Item = (K, Vec<Change>)>,
    ) -> Result<Histories<K>, String> {
        if revision < 1 {
            return Err(format!("revision {revision} below 1"));
        }
        if compact_revision < -1 || compact_revision > revision {
            return Err(format!(
                "compact revision {compact_revision} outside [-1, {revision}]"
            ));
        }
        let keys = keys.into_iter();
        let mut checked: Vec<KeyIndex> = Vec::with_capacity(keys.size_hint().0);
        for (key, changes) in keys {
            let k = key.as_ref();
            if k.is_empty() {
                return Err("empty key".into());
            }
            if checked
                .last()
                .is_some_and(|l| l.changes().first().is_none_or(|c| c.key() >= k))
            {
                return Err("keys out of order".into());
            }
            let index = KeyIndex::from_changes(k, changes)
                .map_err(|e| format!("key {k:?}: bad history: {e:?}"))?;
            if index.changes().iter().any(|c| c.main() > revision) {
                return Err(format!("key {k:?}: change above revision"));
            }
            // Compaction leaves at most one change at or below its point,
            // and never a tombstone.
            if compact_revision >= 0 {
                let below = index
                    .changes()
                    .partition_point(|c| c.main() <= compact_revision);
                if below > 1 || (below == 1 && index.changes()[0].is_tombstone()) {
                    return Err(format!("key {k:?}: history below the compaction point"));
                }
            }
            checked.push(index);
        }
        // Two changes sharing a revision: the revisions at or above the
        // compaction point, sorted, must all differ.
        let mut revisions: Vec<Revision> = checked
            .iter()
            .flat_map(KeyIndex::changes)
            .map(ChangeRef::revision)
            .filter(|r| r.main >= compact_revision)
            .collect();
        revisions.sort_unstable();
        if revisions.windows(2).any(|p| p[0] == p[1]) {
            return Err("two changes share one revision".into());
        }
        Ok(Histories {
            revision,
            compacted: compact_revision,
            keys: checked,
            _keys_as: std::marker::PhantomData,
        })
    }

    /// The newest main revision.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The store these histories describe: the key map and the change log.
    pub fn into_store(self) -> Store {
        let mut store = Store::new();
        store.current = self.revision;
        store.compacted = self.compacted;
        let mut log: Vec<ChangeRef> = Vec::new();
        for index in self.keys {
            let key_len = index.changes().first().map_or(0, |c| c.key().len());
            store.size += KEY_OVERHEAD + key_len as u64;
            store.encoded_keys += key_entry_len(key_len, index.changes().len());
            for change in index.changes() {
                store.size += change.footprint();
                store.encoded_keys += change.encoded_len();
                if change.main() >= store.compacted {
                    store.size += LOG_ENTRY_BYTES;
                    log.push(change.clone());
                }
            }
            store.keys.insert(index);
        }
        log.sort_by_key(ChangeRef::revision);
        store.log = log.into_iter().collect();
        store
    }
}

impl<K: AsRef<[u8]>> Serialize for Histories<K> {
    /// The bytes of the [`Store`] these histories become.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Image", 3)?;
        st.serialize_field("revision", &self.revision)?;
        st.serialize_field("compact_revision", &self.compacted)?;
        st.serialize_field("keys", &SortedKeysRef(&self.keys))?;
        st.end()
    }
}

struct SortedKeysRef<'a>(&'a [KeyIndex]);

impl Serialize for SortedKeysRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|index| {
            let key = index.changes().first().map_or(&[][..], |c| c.key());
            (KeyRef(key), index.changes())
        }))
    }
}

/// Whether compaction at `at` would drop anything from `index`.
/// What [`Store::history_since`] read.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRead {
    pub events: Vec<Event>,
    /// Every change up to this revision (from the start asked for) is in
    /// `events`; the store's revision when the read reached the end.
    pub through: i64,
    /// Log entries (or, for one key, changes) looked at.
    pub visited: usize,
}

/// The event of a key's change at `pos` of its index.
fn event_at(index: &KeyIndex, pos: usize) -> Option<Event> {
    let change = index.changes().get(pos)?;
    Some(Event {
        kind: if change.is_tombstone() {
            EventType::Delete
        } else {
            EventType::Put
        },
        kv: change.to_kv(),
        prev_kv: index.before(pos).map(ChangeRef::to_kv),
    })
}

/// A key and value that do not fit one block (over 4 GiB): refused the
/// same way on every member.
fn too_large() -> MvccError {
    MvccError::Corrupt("a key and value over 4 GiB".into())
}

fn header(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..ResponseHeader::default()
    }
}

/// etcd's applyRange ordering: no sort for (None, Key) since results come in
/// key order; any other target with order None sorts ascending. Our sort is
/// stable (ties stay in key order); etcd's Go sort is not, so ties may come
/// out differently there.
fn sort_kvs(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    let order = match (order, target) {
        (SortOrder::None, SortTarget::Key) => return,
        (SortOrder::None, _) => SortOrder::Ascend,
        (o, _) => o,
    };
    let cmp = |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    match order {
        SortOrder::Descend => kvs.sort_by(|a, b| cmp(b, a)),
        _ => kvs.sort_by(cmp),
    }
}

/// The serialized form: revisions and each key's history; the log is
/// rebuilt on load (it is derived data).
#[derive(Deserialize)]
struct Image {
    revision: i64,
    compact_revision: i64,
    keys: Vec<(KeyBytes, Vec<Change>)>,
}

/// Consecutive postcard values, handed out one at a time: a snapshot read
/// as a stream (`storage::snapshot::StreamDecoder`), or from the mapped
/// file whose bytes the values stay in (`backing::BackedSource`).
pub(crate) trait ValueSource {
    fn next_value<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, String>;

    /// Bytes taken so far.
    fn consumed(&self) -> u64;

    /// Whether every value has been taken.
    fn at_end(&mut self) -> Result<bool, String>;

    /// One key of a store's encoding, with its changes.
    fn next_key(&mut self) -> Result<(Vec<u8>, Vec<Change>), String> {
        self.next_value::<(KeyBytes, Vec<Change>)>()
            .map(|(KeyBytes(key), changes)| (key, changes))
    }
}

/// A key as one byte string (see `qed_wire::bytes`: same encoding as a
/// sequence of bytes, one copy instead of a loop).
#[derive(Deserialize)]
struct KeyBytes(#[serde(with = "qed_wire::bytes")] Vec<u8>);

struct KeyRef<'a>(&'a [u8]);

impl Serialize for KeyRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

struct KeysRef<'a>(&'a KeyMap);

impl Serialize for KeysRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        // The count first (postcard needs it): the map keeps it.
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for (k, index) in self.0.entries() {
            seq.serialize_element(&(KeyRef(k), index.changes()))?;
        }
        seq.end()
    }
}

impl Serialize for Store {
    /// Streams straight from the maps (no intermediate copy), in the field
    /// order of `Image`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Image", 3)?;
        st.serialize_field("revision", &self.current)?;
        st.serialize_field("compact_revision", &self.compacted)?;
        st.serialize_field("keys", &KeysRef(&self.keys))?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for Store {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Store, D::Error> {
        let image = Image::deserialize(d)?;
        Store::from_image(image).map_err(D::Error::custom)
    }
}

/// Appends `change` to its key's index as found by
/// `KeyMap::get_mut_to_write`: the key's change count then, or `None`
/// when the key has no index yet (the caller inserts one). A separate
/// function so the search's borrow of the key map ends here, before the
/// caller may insert.
fn push_change(found: Option<&mut KeyIndex>, change: &ChangeRef) -> Option<usize> {
    let index = found?;
    index.push(change.clone());
    Some(index.changes().len())
}
