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
//! memory (DESIGN §5). A kept change is one [`ChangeRef`]: a thin shared
//! [`Block`] holding its key, then its revision, create revision, version
//! and lease as varints, then the value, so a change costs one allocation
//! of little more than its key and value. The same block is shared by the
//! key's history and the store's revision log. [`Change`] is the decoded,
//! owned form: what snapshots, imports and exports read and write.

use std::ptr::NonNull;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use super::backing::{value_in, BackedValue};
use super::block::Block;
use super::changes::Changes;
use super::revision::Revision;
use qed_wire::kv::KeyValue;

/// One put or delete of one key, decoded (the snapshot form: the field
/// order is the encoding's).
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
    pub(crate) value: Value,
}

/// A decoded change's value: its own bytes, or a range of the snapshot
/// file it was loaded from (see `backing`). Decoding a snapshot from bytes
/// or a stream makes `Held` values; only [`Store::decode_backed`] makes
/// `Backed` ones.
///
/// [`Store::decode_backed`]: super::Store::decode_backed
#[derive(Debug, Clone)]
pub(crate) enum Value {
    Held(Box<[u8]>),
    Backed(BackedValue),
}

impl Default for Value {
    fn default() -> Value {
        Value::Held(Box::default())
    }
}

impl std::ops::Deref for Value {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Value::Held(bytes) => bytes,
            Value::Backed(backed) => backed.bytes(),
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        **self == **other
    }
}

impl Eq for Value {}

impl From<Vec<u8>> for Value {
    fn from(bytes: Vec<u8>) -> Value {
        Value::Held(bytes.into())
    }
}

impl From<&[u8]> for Value {
    fn from(bytes: &[u8]) -> Value {
        Value::Held(bytes.into())
    }
}

impl Change {
    pub(crate) fn tombstone(rev: Revision) -> Change {
        Change {
            main: rev.main,
            create: 0,
            version: 0,
            lease: 0,
            sub: rev.sub,
            value: Value::default(),
        }
    }

    pub(crate) fn is_tombstone(&self) -> bool {
        self.version == 0
    }

    pub(crate) fn revision(&self) -> Revision {
        Revision::new(self.main, self.sub)
    }
}

/// Why a change could not be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TooLarge;

/// One kept change of one key, as stored: a thin pointer to one immutable
/// block `[key length][key][main][sub][main - create][version][lease]`
/// followed by the value, or, for a value left in the snapshot file it was
/// loaded from (`backing`), by the value's offset and length there as two
/// more varints, the block owning the backing (LEB128 varints of the fields' two's-complement
/// bits: fields are never negative in a valid store, where this is the
/// shortest form; a negative one still round-trips, in 10 bytes).
/// The key comes first because it is what the key map compares at every
/// step of a search: reading it decodes one varint (one byte for a key
/// under 128 bytes), not six. Cloning it shares the block. This layout is
/// in memory only: snapshots encode the decoded [`Change`].
#[derive(Clone)]
#[repr(transparent)]
pub(crate) struct ChangeRef(Block);

impl PartialEq for ChangeRef {
    /// Equal fields, key and value (wherever the value is held).
    fn eq(&self, other: &ChangeRef) -> bool {
        self.view() == other.view()
    }
}

impl Eq for ChangeRef {}

/// The fields of a [`ChangeRef`], decoded; key and value borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChangeView<'a> {
    pub(crate) main: i64,
    pub(crate) sub: u32,
    pub(crate) create: i64,
    pub(crate) version: i64,
    pub(crate) lease: i64,
    pub(crate) key: &'a [u8],
    pub(crate) value: &'a [u8],
}

fn bits(v: i64) -> u64 {
    v as u64
}

fn signed(v: u64) -> i64 {
    v as i64
}

/// Bytes of `v` as a LEB128 varint: how postcard (the snapshot encoding)
/// writes unsigned integers and lengths.
pub(crate) fn varint_len(v: u64) -> u64 {
    u64::from(64 - (v | 1).leading_zeros()).div_ceil(7)
}

/// Bytes of `v` as postcard writes a signed integer (zigzag, then LEB128).
fn signed_varint_len(v: i64) -> u64 {
    varint_len(((v << 1) ^ (v >> 63)) as u64)
}

/// Up to seven varints of a change's header, at most 10 bytes each: built
/// on the stack (a put allocates only its block).
struct Head {
    bytes: [u8; 70],
    len: usize,
}

impl Head {
    fn new() -> Head {
        Head {
            bytes: [0; 70],
            len: 0,
        }
    }

    fn put(&mut self, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            let more = v != 0;
            if let Some(b) = self.bytes.get_mut(self.len) {
                *b = byte | if more { 0x80 } else { 0 };
                self.len += 1;
            }
            if !more {
                break;
            }
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len.min(self.bytes.len())]
    }

    /// A change's key length, and its fields after the key.
    fn fields(key: &[u8], rev: Revision, create: i64, version: i64, lease: i64) -> (Head, Head) {
        let mut key_len = Head::new();
        key_len.put(key.len() as u64);
        let mut head = Head::new();
        head.put(bits(rev.main));
        head.put(u64::from(rev.sub));
        head.put(bits(rev.main.wrapping_sub(create)));
        head.put(bits(version));
        head.put(bits(lease));
        (key_len, head)
    }
}

/// Reads a varint written by `Head::put` at `*at`. Blocks are only ever
/// made by [`ChangeRef::new`], so the bytes are well formed; a short read
/// yields what was there rather than panicking.
fn get_varint(bytes: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    while let Some(&b) = bytes.get(*at) {
        *at += 1;
        if shift < 64 {
            v |= u64::from(b & 0x7f) << shift;
        }
        shift += 7;
        if b < 0x80 {
            break;
        }
    }
    v
}

impl ChangeRef {
    /// Encodes one change of `key`. Fails only for a key and value over
    /// 2 GiB together.
    pub(crate) fn new(
        key: &[u8],
        rev: Revision,
        create: i64,
        version: i64,
        lease: i64,
        value: &[u8],
    ) -> Result<ChangeRef, TooLarge> {
        let (key_len, head) = Head::fields(key, rev, create, version, lease);
        Block::new(&[key_len.as_slice(), key, head.as_slice(), value])
            .map(ChangeRef)
            .ok_or(TooLarge)
    }

    pub(crate) fn tombstone(key: &[u8], rev: Revision) -> Result<ChangeRef, TooLarge> {
        ChangeRef::new(key, rev, 0, 0, 0, &[])
    }

    /// A decoded change of `key`, stored. A value in a backing stays
    /// there: the block holds its offset and length and owns the backing.
    pub(crate) fn from_change(key: &[u8], c: &Change) -> Result<ChangeRef, TooLarge> {
        let backed = match &c.value {
            Value::Held(value) => {
                return ChangeRef::new(key, c.revision(), c.create, c.version, c.lease, value)
            }
            Value::Backed(backed) => backed,
        };
        let (key_len, mut head) = Head::fields(key, c.revision(), c.create, c.version, c.lease);
        head.put(backed.offset as u64);
        head.put(backed.len as u64);
        Block::with_backing(
            &[key_len.as_slice(), key, head.as_slice()],
            backed.backing.clone(),
        )
        .map(ChangeRef)
        .ok_or(TooLarge)
    }

    /// The key, and where the fields after it start.
    fn key_and_rest(&self) -> (&[u8], usize) {
        let b = self.0.as_bytes();
        let mut at = 0;
        let key_len = usize::try_from(get_varint(b, &mut at)).unwrap_or(usize::MAX);
        let key_end = at.saturating_add(key_len).min(b.len());
        (&b[at.min(key_end)..key_end], key_end)
    }

    pub(crate) fn view(&self) -> ChangeView<'_> {
        self.view_and_fields_end().0
    }

    /// The view, and where the fields end in the block (where a value
    /// held in it starts).
    fn view_and_fields_end(&self) -> (ChangeView<'_>, usize) {
        let b = self.0.as_bytes();
        let (key, mut at) = self.key_and_rest();
        let main = signed(get_varint(b, &mut at));
        let sub = get_varint(b, &mut at) as u32;
        let create = main.wrapping_sub(signed(get_varint(b, &mut at)));
        let version = signed(get_varint(b, &mut at));
        let lease = signed(get_varint(b, &mut at));
        let fields_end = at;
        let value = match self.0.backing() {
            None => b.get(at..).unwrap_or_default(),
            Some(backing) => {
                let offset = usize::try_from(get_varint(b, &mut at)).unwrap_or(usize::MAX);
                let len = usize::try_from(get_varint(b, &mut at)).unwrap_or(usize::MAX);
                value_in(backing.bytes(), offset, len)
            }
        };
        let view = ChangeView {
            main,
            sub,
            create,
            version,
            lease,
            key,
            value,
        };
        (view, fields_end)
    }

    /// The main revision (the first field after the key).
    pub(crate) fn main(&self) -> i64 {
        let (_, mut at) = self.key_and_rest();
        signed(get_varint(self.0.as_bytes(), &mut at))
    }

    pub(crate) fn revision(&self) -> Revision {
        let b = self.0.as_bytes();
        let (_, mut at) = self.key_and_rest();
        let main = signed(get_varint(b, &mut at));
        Revision::new(main, get_varint(b, &mut at) as u32)
    }

    /// The key: one varint read, no other field decoded.
    pub(crate) fn key(&self) -> &[u8] {
        self.key_and_rest().0
    }

    pub(crate) fn is_tombstone(&self) -> bool {
        let b = self.0.as_bytes();
        let (_, mut at) = self.key_and_rest();
        for _ in 0..3 {
            get_varint(b, &mut at);
        }
        get_varint(b, &mut at) == 0
    }

    #[cfg(test)]
    pub(crate) fn to_change(&self) -> Change {
        let v = self.view();
        Change {
            main: v.main,
            create: v.create,
            version: v.version,
            lease: v.lease,
            sub: v.sub,
            value: v.value.into(),
        }
    }

    /// The wire form. A tombstone becomes what etcd puts in a delete event:
    /// the key and the delete's revision as `mod_revision`, nothing else.
    pub(crate) fn to_kv(&self) -> KeyValue {
        let v = self.view();
        KeyValue {
            key: v.key.to_vec(),
            create_revision: v.create,
            mod_revision: v.main,
            version: v.version,
            value: v.value.to_vec(),
            lease: v.lease,
        }
    }

    /// Bytes of its snapshot encoding (the [`Change`] it decodes to, as
    /// its `Serialize` writes it).
    pub(crate) fn encoded_len(&self) -> u64 {
        let v = self.view();
        let value = v.value.len() as u64;
        signed_varint_len(v.main)
            + signed_varint_len(v.create)
            + signed_varint_len(v.version)
            + signed_varint_len(v.lease)
            + varint_len(u64::from(v.sub))
            + varint_len(value)
            + value
    }

    /// Estimated bytes this change occupies: its block with malloc's
    /// header and rounding (up to 16 bytes; counted in full). A value left
    /// in a backing counts as if held: the estimate is the data's size
    /// whatever a member loaded it from, so a restart does not change it.
    pub(crate) fn footprint(&self) -> u64 {
        let held_len = match self.0.backing() {
            None => self.0.len(),
            Some(_) => {
                let (view, fields_end) = self.view_and_fields_end();
                fields_end + view.value.len()
            }
        };
        Block::alloc_bytes(held_len) + 16
    }

    #[cfg(test)]
    pub(crate) fn ref_count(&self) -> u32 {
        self.0.ref_count()
    }

    #[cfg(test)]
    pub(crate) fn ptr_eq(&self, other: &ChangeRef) -> bool {
        self.0.ptr_eq(&other.0)
    }
}

impl std::fmt::Debug for ChangeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.view().fmt(f)
    }
}

impl Serialize for ChangeRef {
    /// The bytes of the [`Change`] it decodes to (the snapshot format).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.view();
        let mut st = s.serialize_struct("Change", 6)?;
        st.serialize_field("main", &v.main)?;
        st.serialize_field("create", &v.create)?;
        st.serialize_field("version", &v.version)?;
        st.serialize_field("lease", &v.lease)?;
        st.serialize_field("sub", &v.sub)?;
        st.serialize_field("value", &Bytes(v.value))?;
        st.end()
    }
}

struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// What [`KeyIndex::compact`] dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Compacted {
    /// Their footprint (the quota estimate's bytes).
    pub(crate) freed: u64,
    /// Their snapshot encoding's bytes.
    pub(crate) encoded: u64,
    pub(crate) count: usize,
    /// Nothing is left: the key is gone from the key space entirely, and
    /// the index must be dropped.
    pub(crate) empty: bool,
}

/// Why a snapshot's key history was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HistoryError {
    Empty,
    OutOfOrder,
    BadTombstone,
    BadVersion,
    TooLarge,
}

/// A key's kept changes, oldest first, in one word: a key map leaf holds
/// nothing else per key. Most keys hold exactly one change once compacted
/// (or never rewritten); then the word is that change's [`ChangeRef`]
/// itself (a block pointer: even, see `block`), and the key costs no
/// allocation beyond the change's block. Otherwise it is the address of a
/// shared array of them ([`Changes`]: one allocation, aligned as a
/// pointer, 4 or 8) with its lowest bit set. Cloning is cheap either way
/// (a reference count), which the persistent map relies on when it copies
/// a node.
///
/// Invariants: the word owns one reference to what it points at (the
/// block, or the array); the array form holds at least two changes (one
/// left goes back to the inline form, see `settle`).
#[repr(transparent)]
pub(crate) struct KeyIndex {
    word: NonNull<u8>,
}

// SAFETY: the word is a `ChangeRef` or a `Changes`, both Send and Sync;
// nothing else is reachable through it.
unsafe impl Send for KeyIndex {}
// SAFETY: as above.
unsafe impl Sync for KeyIndex {}

/// The tag bit of the array form.
const MANY: usize = 1;

impl KeyIndex {
    fn many(changes: Changes) -> KeyIndex {
        // The array is aligned as a pointer (4 on 32-bit ARM, 8 on
        // 64-bit): bit 0 is free.
        let word = changes.into_raw().as_ptr().map_addr(|a| a | MANY);
        match NonNull::new(word) {
            Some(word) => KeyIndex { word },
            // Unreachable: the tag bit alone is not null.
            None => std::process::abort(),
        }
    }

    fn is_many(&self) -> bool {
        self.word.as_ptr().addr() & MANY != 0
    }

    /// The array's pointer in the array form (only meaningful then).
    fn many_ptr(&self) -> NonNull<u8> {
        let raw = self.word.as_ptr().map_addr(|a| a & !MANY);
        // The array's address is not null (it is the word minus its tag).
        NonNull::new(raw).unwrap_or(self.word)
    }

    /// Runs `f` on the array form's array (`None` in the inline form); the
    /// word follows the array if `f` unshares or reallocates it.
    fn with_many<R>(&mut self, f: impl FnOnce(&mut Changes) -> R) -> Option<R> {
        if !self.is_many() {
            return None;
        }
        // SAFETY: in the array form the word owns one reference to a
        // `Changes` made by `into_raw`; it is taken back here and given up
        // again below (ManuallyDrop: never dropped here, and nothing in
        // between panics: `Changes` aborts on allocation failure).
        let mut changes =
            std::mem::ManuallyDrop::new(unsafe { Changes::from_raw(self.many_ptr()) });
        let out = f(&mut changes);
        let word = std::mem::ManuallyDrop::into_inner(changes);
        // Give the (possibly new) reference back to the word.
        std::mem::forget(std::mem::replace(self, KeyIndex::many(word)));
        Some(out)
    }

    /// Whether the key holds a single change, inline.
    #[cfg(test)]
    fn is_inline(&self) -> bool {
        !self.is_many()
    }
}

impl Clone for KeyIndex {
    fn clone(&self) -> KeyIndex {
        if self.is_many() {
            // SAFETY: the word holds a live reference (see the type);
            // cloning through a ManuallyDrop leaves it with the word.
            let changes =
                std::mem::ManuallyDrop::new(unsafe { Changes::from_raw(self.many_ptr()) });
            KeyIndex::many(Changes::clone(&changes))
        } else {
            KeyIndex::new(self.changes()[0].clone())
        }
    }
}

impl Drop for KeyIndex {
    fn drop(&mut self) {
        if self.is_many() {
            // SAFETY: the word's own reference, given back once.
            drop(unsafe { Changes::from_raw(self.many_ptr()) });
        } else {
            // SAFETY: the word's own block reference, given back once.
            drop(unsafe { Block::from_raw(self.word) });
        }
    }
}

impl PartialEq for KeyIndex {
    fn eq(&self, other: &KeyIndex) -> bool {
        self.changes() == other.changes()
    }
}

impl Eq for KeyIndex {}

impl std::fmt::Debug for KeyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.changes()).finish()
    }
}

impl KeyIndex {
    /// A key's first change.
    pub(crate) fn new(change: ChangeRef) -> KeyIndex {
        KeyIndex {
            word: change.0.into_raw(),
        }
    }

    /// Rebuilds a history read from a snapshot, refusing one that breaks the
    /// invariants above (a corrupt or hostile file must not panic us later).
    pub(crate) fn from_changes(key: &[u8], changes: Vec<Change>) -> Result<KeyIndex, HistoryError> {
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
        // Exactly sized (a shrink after the fact may keep the larger
        // malloc chunk).
        let mut refs = Vec::with_capacity(changes.len());
        for c in &changes {
            refs.push(ChangeRef::from_change(key, c).map_err(|TooLarge| HistoryError::TooLarge)?);
        }
        Ok(if refs.len() == 1 {
            match refs.pop() {
                Some(c) => KeyIndex::new(c),
                None => return Err(HistoryError::Empty),
            }
        } else {
            KeyIndex::many(Changes::from_exact(refs.into_iter()))
        })
    }

    pub(crate) fn changes(&self) -> &[ChangeRef] {
        if self.is_many() {
            // SAFETY: the word holds a live reference; the array is only
            // changed through `with_many`, which needs `&mut self`.
            unsafe { Changes::slice_from_raw(self.many_ptr()) }
        } else {
            // SAFETY: in the inline form the word is a `ChangeRef` (both
            // types are one transparent pointer), alive as long as `self`.
            std::slice::from_ref(unsafe { &*(self as *const KeyIndex).cast::<ChangeRef>() })
        }
    }

    /// The key's value now, if it exists.
    pub(crate) fn latest(&self) -> Option<&ChangeRef> {
        self.changes().last().filter(|c| !c.is_tombstone())
    }

    /// The key's value as of main revision `rev` (the last change of that
    /// revision counts), if it existed then.
    pub(crate) fn at(&self, rev: i64) -> Option<&ChangeRef> {
        let changes = self.changes();
        let n = changes.partition_point(|c| c.main() <= rev);
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
    pub(crate) fn before(&self, index: usize) -> Option<&ChangeRef> {
        index
            .checked_sub(1)
            .and_then(|i| self.changes().get(i))
            .filter(|c| !c.is_tombstone())
    }

    /// Appends a change; the caller guarantees it is newer than the last.
    ///
    /// Small histories grow exactly (`Vec`'s first growth would reserve
    /// four); longer ones (hot keys between compactions) double as usual to
    /// stay amortized O(1). A history shared with a snapshot's view is
    /// copied first (its changes' blocks are shared, not copied).
    pub(crate) fn push(&mut self, change: ChangeRef) {
        if self.is_many() {
            self.with_many(|v| v.push(change));
        } else {
            let first = self.changes()[0].clone();
            *self = KeyIndex::many(Changes::from_exact([first, change].into_iter()));
        }
    }

    /// Removes the newest change (rolling back a failed txn). Returns it,
    /// and whether it was the only one (the key is then gone, and this
    /// index must be dropped).
    pub(crate) fn pop(&mut self) -> (ChangeRef, bool) {
        let Some(last) = self.with_many(Changes::pop) else {
            return (self.changes()[0].clone(), true);
        };
        self.settle();
        match last {
            Some(c) => (c, false),
            // Never empty (see `settle`); report it gone if it were.
            None => (self.changes()[0].clone(), true),
        }
    }

    /// Back to the inline form when one change is left.
    fn settle(&mut self) {
        if self.is_many() && self.changes().len() == 1 {
            let only = self.changes()[0].clone();
            *self = KeyIndex::new(only);
        }
    }

    /// Index of the change compaction at `at` keeps from `..=at`: the newest
    /// change at or below `at`, unless it is a tombstone (etcd's
    /// `keyIndex.keep`).
    pub(crate) fn kept_at(&self, at: i64) -> Option<usize> {
        let changes = self.changes();
        let n = changes.partition_point(|c| c.main() <= at);
        let i = n.checked_sub(1)?;
        match changes.get(i) {
            Some(c) if !c.is_tombstone() => Some(i),
            _ => None,
        }
    }

    /// Whether compaction at `at` would drop anything.
    pub(crate) fn needs_compaction(&self, at: i64) -> bool {
        let changes = self.changes();
        let n = changes.partition_point(|c| c.main() <= at);
        n >= 2 || (n == 1 && changes[0].is_tombstone())
    }

    /// Drops every change at or below `at` except the one [`kept_at`]
    /// names; returns what was dropped (see [`Compacted`]).
    ///
    /// [`kept_at`]: KeyIndex::kept_at
    pub(crate) fn compact(&mut self, at: i64) -> Compacted {
        let n = self.changes().partition_point(|c| c.main() <= at);
        let drop_to = match self.kept_at(at) {
            Some(i) => i,
            None => n,
        };
        let len = self.changes().len();
        let dropped = &self.changes()[..drop_to.min(len)];
        let done = Compacted {
            freed: dropped.iter().map(ChangeRef::footprint).sum(),
            encoded: dropped.iter().map(ChangeRef::encoded_len).sum(),
            count: dropped.len(),
            empty: drop_to >= len,
        };
        if drop_to == 0 || done.empty {
            return done;
        }
        self.with_many(|v| v.drain_front(drop_to));
        self.settle();
        done
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

    fn tomb(main: i64) -> Change {
        Change::tombstone(Revision::new(main, 0))
    }

    fn index(changes: Vec<Change>) -> KeyIndex {
        let mut refs = changes
            .iter()
            .map(|c| ChangeRef::from_change(b"k", c).expect("small"));
        let mut ki = KeyIndex::new(refs.next().expect("one change"));
        for c in refs {
            ki.push(c);
        }
        ki
    }

    #[test]
    fn changes_round_trip_through_their_blocks() {
        let cases = [
            put(2, 2, 1, b"a"),
            put(i64::MAX, 1, i64::MAX, &[7; 300]),
            Change {
                main: 5,
                create: 3,
                version: 3,
                lease: i64::MIN,
                sub: u32::MAX,
                value: Value::default(),
            },
            tomb(9),
            // Not valid in a store, but must still decode as written.
            put(-4, 7, -1, b"x"),
        ];
        for c in &cases {
            let r = ChangeRef::from_change(b"key", c).expect("small");
            assert_eq!(&r.to_change(), c);
            assert_eq!(r.key(), b"key");
            assert_eq!(r.main(), c.main);
            assert_eq!(r.revision(), c.revision());
            assert_eq!(r.is_tombstone(), c.is_tombstone());
            // Serialized exactly as the decoded form (the snapshot format).
            assert_eq!(
                postcard::to_stdvec(&r).expect("encode"),
                postcard::to_stdvec(c).expect("encode")
            );
        }
        // A fresh key's one change: the block is the key, the value and
        // 8 header bytes at 1M revisions.
        let r = ChangeRef::new(
            &[1; 16],
            Revision::new(1_000_000, 0),
            1_000_000,
            1,
            0,
            &[2; 256],
        )
        .expect("small");
        assert!(r.footprint() <= 8 + 8 + 16 + 256 + 16);
    }

    #[test]
    fn reads_at_revision_follow_generations() {
        // put@2, put@3, del@4, put@6
        let ki = index(vec![
            put(2, 2, 1, b"a"),
            put(3, 2, 2, b"b"),
            tomb(4),
            put(6, 6, 1, b"c"),
        ]);
        assert!(ki.at(1).is_none());
        assert_eq!(ki.at(2).map(|c| c.view().version), Some(1));
        assert_eq!(ki.at(3).map(|c| c.view().value), Some(&b"b"[..]));
        assert!(ki.at(4).is_none());
        assert!(ki.at(5).is_none());
        assert_eq!(ki.at(6).map(|c| c.view().create), Some(6));
        assert_eq!(ki.latest().map(ChangeRef::main), Some(6));
    }

    #[test]
    fn compaction_keeps_newest_live_revision_and_drops_tombstones() {
        let mut ki = index(vec![
            put(2, 2, 1, b"a"),
            put(3, 2, 2, b"b"),
            tomb(4),
            put(6, 6, 1, b"c"),
        ]);
        assert_eq!(ki.compact(3).count, 1);
        assert_eq!(ki.changes()[0].main(), 3);
        // The tombstone at 4 is the newest at or below 5: it and everything
        // before it goes.
        assert_eq!(ki.compact(5).count, 2);
        assert_eq!(ki.changes().len(), 1);
        assert_eq!(ki.changes()[0].main(), 6);
        // Compacting again above the only change keeps it.
        let nothing = Compacted {
            freed: 0,
            encoded: 0,
            count: 0,
            empty: false,
        };
        assert_eq!(ki.compact(9), nothing);
        assert_eq!(ki.changes().len(), 1);
    }

    #[test]
    fn compaction_of_a_deleted_key_empties_it() {
        let mut ki = index(vec![put(2, 2, 1, b"a"), tomb(3)]);
        assert!(ki.compact(3).empty);
    }

    #[test]
    fn prev_of_a_change_is_the_live_value_before_it() {
        let ki = index(vec![put(2, 2, 1, b"a"), tomb(3), put(4, 4, 1, b"b")]);
        assert_eq!(ki.before(1).map(ChangeRef::main), Some(2));
        assert!(ki.before(2).is_none());
        assert!(ki.before(0).is_none());
        assert_eq!(ki.position(Revision::new(3, 0)), Some(1));
        assert_eq!(ki.position(Revision::new(3, 1)), None);
    }

    #[test]
    fn snapshot_histories_are_validated() {
        let from = |c| KeyIndex::from_changes(b"k", c);
        assert_eq!(from(vec![]), Err(HistoryError::Empty));
        assert_eq!(
            from(vec![put(3, 2, 2, b""), put(3, 2, 3, b"")]),
            Err(HistoryError::OutOfOrder)
        );
        assert_eq!(
            from(vec![put(3, 2, 2, b""), put(4, 2, 4, b"")]),
            Err(HistoryError::BadVersion)
        );
        let mut bad = tomb(5);
        bad.lease = 7;
        assert_eq!(from(vec![bad]), Err(HistoryError::BadTombstone));
        assert!(from(vec![put(3, 2, 2, b"x")]).is_ok());
    }

    #[test]
    fn index_packs_small() {
        assert_eq!(std::mem::size_of::<ChangeRef>(), 8);
        assert_eq!(std::mem::size_of::<KeyIndex>(), 8);
        assert_eq!(std::mem::size_of::<Option<KeyIndex>>(), 8);
    }

    #[test]
    fn histories_move_between_inline_and_vec_forms() {
        let mut ki = index(vec![put(2, 2, 1, b"a")]);
        assert!(ki.is_inline());
        let shared = ki.clone();
        ki.push(ChangeRef::from_change(b"k", &put(3, 2, 2, b"b")).expect("small"));
        assert!(!ki.is_inline());
        // The clone (a snapshot's view) is untouched and shares the block.
        assert_eq!(shared.changes().len(), 1);
        assert!(shared.changes()[0].ptr_eq(&ki.changes()[0]));
        let (popped, gone) = ki.pop();
        assert_eq!((popped.main(), gone), (3, false));
        assert!(ki.is_inline());
        ki.push(ChangeRef::from_change(b"k", &put(3, 2, 2, b"b")).expect("small"));
        ki.push(ChangeRef::from_change(b"k", &put(4, 2, 3, b"c")).expect("small"));
        ki.compact(3);
        assert_eq!(ki.changes().len(), 2);
        ki.compact(4);
        assert!(ki.is_inline());
        assert_eq!(ki.changes()[0].main(), 4);
        let (popped, gone) = ki.pop();
        assert_eq!((popped.main(), gone), (4, true));
    }
}
