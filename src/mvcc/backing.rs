//! Bytes that a store's values may stay in instead of being copied out:
//! the snapshot file a member loaded at start, mapped into memory.
//!
//! A restart decodes the newest snapshot into the key space. Copying every
//! value onto the heap would make the restarted member hold the whole data
//! set in anonymous memory, which the kernel can never reclaim; etcd's
//! bbolt instead leaves values in its mapped file, where untouched pages
//! cost no resident memory and clean ones can be evicted under pressure.
//! With a [`Backing`], a loaded change holds the offset and length of its
//! value in the file (see `key_index::ChangeRef`), and the value's pages
//! are read in only when something reads the value.
//!
//! Invariants:
//! - [`Mapped::bytes`] returns the same bytes, at the same address, for the
//!   backing's whole life: a mapped snapshot file is never written after
//!   it was renamed into place, and is only unlinked (its pages stay valid
//!   while mapped).
//! - every change pointing into a backing holds an `Arc` on it, so the
//!   mapping outlives every value read from it.
//!
//! This module touches no file: `storage::fs` maps the file and hands the
//! mapping in as a [`Mapped`]; tests and file layers that cannot map (the
//! fault-injecting one) hand in the file's bytes as a `Vec<u8>`.

use std::sync::Arc;

use serde::Deserialize;

use super::key_index::{Change, Value};
use super::store::ValueSource;

/// A read-only byte string that never changes while it lives.
pub trait Mapped: Send + Sync {
    fn bytes(&self) -> &[u8];

    /// Drops this process's claim on the pages read so far (they stay in
    /// the page cache and read back in on the next access). A loaded
    /// snapshot is read through once to decode its keys; this keeps those
    /// pages from counting as the member's resident memory afterwards.
    fn release_pages(&self) {}
}

impl Mapped for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// The bytes values point into (see the module doc).
pub struct Backing(Box<dyn Mapped>);

impl Backing {
    pub fn new(bytes: impl Mapped + 'static) -> Arc<Backing> {
        Arc::new(Backing(Box::new(bytes)))
    }

    pub fn bytes(&self) -> &[u8] {
        self.0.bytes()
    }

    /// See [`Mapped::release_pages`].
    pub fn release_pages(&self) {
        self.0.release_pages()
    }
}

impl std::fmt::Debug for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Backing({} bytes)", self.bytes().len())
    }
}

/// A value that stays in a [`Backing`]: `len` bytes at `offset`.
#[derive(Debug, Clone)]
pub(crate) struct BackedValue {
    pub(crate) backing: Arc<Backing>,
    pub(crate) offset: usize,
    pub(crate) len: usize,
}

impl BackedValue {
    /// The value's bytes; empty if the range is not in the backing (never
    /// the case for one made by the store's decoder, which takes the range
    /// from a slice of the backing itself).
    pub(crate) fn bytes(&self) -> &[u8] {
        value_in(self.backing.bytes(), self.offset, self.len)
    }
}

/// `len` bytes at `offset` in `bytes`, or nothing if they are not there.
pub(crate) fn value_in(bytes: &[u8], offset: usize, len: usize) -> &[u8] {
    offset
        .checked_add(len)
        .and_then(|end| bytes.get(offset..end))
        .unwrap_or_default()
}

/// Values shorter than this are copied out even from a backing: a backed
/// value costs its offset and length (2–8 bytes) and the backing's
/// pointer (8) in the change's block, so a short one is cheaper held.
const BACKED_MIN: usize = 24;

/// A change as encoded in a snapshot (`key_index::Change`'s fields, in
/// its order), its value borrowed from the bytes decoded.
#[derive(Deserialize)]
struct ChangeIn<'a> {
    main: i64,
    create: i64,
    version: i64,
    lease: i64,
    sub: u32,
    #[serde(borrow)]
    value: &'a [u8],
}

/// The values encoded in `backing` from `pos` to `end`, taken one at a
/// time; a store's keys decode with their values left in the backing.
pub(crate) struct BackedSource {
    backing: Arc<Backing>,
    pos: usize,
    end: usize,
    start: usize,
}

impl BackedSource {
    /// The encoding at `range` of `backing` (clamped to its bytes).
    pub(crate) fn new(backing: Arc<Backing>, range: std::ops::Range<usize>) -> BackedSource {
        let end = range.end.min(backing.bytes().len());
        let start = range.start.min(end);
        BackedSource {
            backing,
            pos: start,
            end,
            start,
        }
    }

    fn rest(&self) -> &[u8] {
        self.backing
            .bytes()
            .get(self.pos..self.end)
            .unwrap_or_default()
    }
}

impl ValueSource for BackedSource {
    fn next_value<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, String> {
        let rest = self.rest();
        let (value, left) = postcard::take_from_bytes::<T>(rest).map_err(|e| e.to_string())?;
        self.pos += rest.len() - left.len();
        Ok(value)
    }

    fn consumed(&self) -> u64 {
        (self.pos - self.start) as u64
    }

    fn at_end(&mut self) -> Result<bool, String> {
        Ok(self.pos >= self.end)
    }

    fn next_key(&mut self) -> Result<(Vec<u8>, Vec<Change>), String> {
        let base = self.backing.bytes().as_ptr() as usize;
        let rest = self.rest();
        let ((key, changes), left) = postcard::take_from_bytes::<(&[u8], Vec<ChangeIn<'_>>)>(rest)
            .map_err(|e| e.to_string())?;
        let used = rest.len() - left.len();
        let changes = changes
            .into_iter()
            .map(|c| Change {
                main: c.main,
                create: c.create,
                version: c.version,
                lease: c.lease,
                sub: c.sub,
                value: if c.value.len() < BACKED_MIN {
                    Value::from(c.value)
                } else {
                    Value::Backed(BackedValue {
                        backing: self.backing.clone(),
                        // The value is a slice of the backing's bytes.
                        offset: c.value.as_ptr() as usize - base,
                        len: c.value.len(),
                    })
                },
            })
            .collect();
        let key = key.to_vec();
        self.pos += used;
        Ok((key, changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::Store;
    use qed_wire::kv::{PutRequest, RangeRequest};

    fn put(store: &mut Store, key: &str, value: &[u8]) {
        let req = PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
            ..Default::default()
        };
        store.put(&req, &|_| true).expect("put");
    }

    fn get(store: &Store, key: &str) -> Vec<u8> {
        let req = RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        let found = store.range(&req).expect("range");
        found
            .kvs
            .into_iter()
            .next()
            .map(|kv| kv.value)
            .unwrap_or_default()
    }

    /// A store with short and long values, history, a delete and a
    /// compaction point.
    fn sample() -> Store {
        let mut store = Store::new();
        let long = |i: u8| vec![b'a' + i; 100 + usize::from(i)];
        for i in 0..20u8 {
            put(&mut store, &format!("k{i:02}"), &long(i));
        }
        put(&mut store, "short", b"tiny");
        put(&mut store, "k03", &long(19));
        store.compact(store.revision() - 1).expect("compact");
        put(&mut store, "k05", &long(7));
        store
            .delete_range(&qed_wire::kv::DeleteRangeRequest {
                key: b"k06".to_vec(),
                ..Default::default()
            })
            .expect("delete");
        store
    }

    #[test]
    fn a_store_decoded_from_a_backing_leaves_long_values_in_it() {
        let store = sample();
        let image = store.to_bytes().expect("encode");
        let mut file = b"prefix".to_vec();
        file.extend_from_slice(&image);
        let backing = Backing::new(file);
        let mut source = BackedSource::new(backing.clone(), 6..6 + image.len());
        let mut loaded = Store::decode_from(&mut source).expect("decode");
        assert!(source.at_end().expect("end"));
        assert_eq!(source.consumed(), image.len() as u64);
        drop(source);
        // The same store: the same encoding, reads and size estimate.
        assert_eq!(loaded.to_bytes().expect("encode"), image);
        assert_eq!(loaded.size_bytes(), store.size_bytes());
        assert_eq!(get(&loaded, "k03"), get(&store, "k03"));
        assert_eq!(get(&loaded, "short"), b"tiny");
        // Every long value holds the backing; the short one was copied.
        let held = loaded
            .histories()
            .flat_map(|(_, changes)| changes.iter())
            .filter(|c| c.view().value.len() >= BACKED_MIN)
            .count();
        assert!(held >= 19);
        assert_eq!(Arc::strong_count(&backing), held + 1);
        // Writes on top of it as on any store; dropping every store that
        // holds the values lets the backing go.
        put(&mut loaded, "k03", b"new");
        assert_eq!(get(&loaded, "k03"), b"new");
        let copy = loaded.clone();
        drop(loaded);
        assert_eq!(get(&copy, "k10"), vec![b'k'; 110]);
        drop(copy);
        assert_eq!(Arc::strong_count(&backing), 1);
    }

    #[test]
    fn a_cut_or_garbled_backing_is_an_error() {
        let image = sample().to_bytes().expect("encode");
        let backing = Backing::new(image.clone());
        for end in [image.len() / 2, image.len() - 1] {
            let mut source = BackedSource::new(backing.clone(), 0..end);
            assert!(Store::decode_from(&mut source).is_err(), "cut at {end}");
        }
        // A range past the bytes is clamped, not a panic (what the bytes
        // from 10 on decode to, if anything, does not matter).
        let mut source = BackedSource::new(backing.clone(), 10..usize::MAX);
        let _ = Store::decode_from(&mut source);
        let mut flipped = image;
        let at = flipped.len() / 3;
        flipped[at] ^= 0xff;
        let mut source = BackedSource::new(Backing::new(flipped.clone()), 0..flipped.len());
        if let Ok(store) = Store::decode_from(&mut source) {
            // A flip inside a value decodes; the value is what the bytes say.
            assert_ne!(
                store.to_bytes().expect("encode"),
                sample().to_bytes().expect("encode")
            );
        }
    }
}
