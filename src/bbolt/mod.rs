//! bbolt's file format, read and written in memory: what etcd keeps its
//! backend in, and so what `etcdctl snapshot save` writes.
//!
//! Role: [`read::Db`] walks a bbolt file given as bytes (no I/O, no mmap)
//! and [`write::DbWriter`] builds one into a `Vec<u8>`, for the etcd layout
//! in `crate::etcd_db`. Only what snapshots need: buckets one level below
//! the root, each a sorted list of keys and values.
//!
//! The format (bbolt 1.3, as etcd 3.4 and 3.5 write it): fixed-size pages
//! (the size is in the meta page; 4096 on Linux/x86). Pages 0 and 1 hold
//! two meta copies (magic, version 2, page size, root bucket, freelist
//! page, high-water page id, transaction id, FNV-64a checksum of the meta);
//! the valid one with the higher transaction id wins. Every other page is a
//! 16-byte header (id, flags, count, overflow) then elements: a branch page
//! has `count` (pos, ksize, child page id) entries, a leaf page `count`
//! (flags, pos, ksize, vsize) entries, `pos` counted from the element
//! itself. A page whose content does not fit spans `overflow` more pages.
//! A leaf entry with the bucket flag is a nested bucket: a 16-byte header
//! (root page id, sequence) and, when the root is 0, the bucket's one leaf
//! page inline after it.
//!
//! Invariants: the reader never panics and never allocates by a length
//! read from the file (every slice is checked against the file, each page
//! is visited at most once per walk, and trees deeper than [`MAX_DEPTH`]
//! are refused), so a hostile file costs at most time linear in its size.
//! The writer produces files `bbolt`'s own consistency check (`tx.Check`,
//! run by `etcdctl snapshot status`) accepts: every page below the high
//! water mark is reachable exactly once or free.

pub mod read;
pub mod write;

#[cfg(test)]
mod tests;

use std::fmt;

pub use read::{BucketRef, Db, Entry};
pub use write::{BucketWriter, DbWriter};

pub(crate) const MAGIC: u32 = 0xED0C_DAED;
pub(crate) const VERSION: u32 = 2;
pub(crate) const PAGE_HEADER: usize = 16;
pub(crate) const ELEMENT: usize = 16;
pub(crate) const BUCKET_HEADER: usize = 16;
pub(crate) const META_LEN: usize = 64;
/// Bytes of the meta covered by its checksum (all fields before it).
pub(crate) const META_SUMMED: usize = 56;

pub(crate) const BRANCH_PAGE: u16 = 0x01;
pub(crate) const LEAF_PAGE: u16 = 0x02;
pub(crate) const META_PAGE: u16 = 0x04;
pub(crate) const FREELIST_PAGE: u16 = 0x10;
pub(crate) const BUCKET_LEAF_FLAG: u32 = 0x01;

/// bbolt's largest key.
pub const MAX_KEY_SIZE: usize = 32768;
/// Deepest B+tree the reader follows. With at least two entries per
/// branch page, 64 levels would need more pages than any file has.
pub const MAX_DEPTH: usize = 64;
/// The page size etcd's files have on Linux/x86, and the one we write.
pub const DEFAULT_PAGE_SIZE: usize = 4096;

/// FNV-64a, bbolt's meta checksum.
pub(crate) fn fnv64a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Why a file could not be read as bbolt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// Neither meta page is valid: not a bbolt file, or both copies damaged.
    NotBbolt(String),
    /// A page is damaged or inconsistent; the text says how.
    Corrupt { page: u64, reason: String },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::NotBbolt(why) => write!(f, "not a bbolt database: {why}"),
            ReadError::Corrupt { page, reason } => {
                write!(f, "bbolt page {page}: {reason}")
            }
        }
    }
}

impl std::error::Error for ReadError {}

/// Why a database could not be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// Keys within a bucket must be given in strictly increasing order.
    Unsorted { bucket: Vec<u8> },
    /// An empty key, or one longer than [`MAX_KEY_SIZE`].
    BadKey { bucket: Vec<u8>, len: usize },
    /// A value of 2 GiB or more (bbolt's limit).
    ValueTooLarge { bucket: Vec<u8>, len: usize },
    /// Two buckets of one name.
    DuplicateBucket(Vec<u8>),
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::Unsorted { bucket } => write!(
                f,
                "bucket {}: keys not in increasing order",
                String::from_utf8_lossy(bucket)
            ),
            WriteError::BadKey { bucket, len } => write!(
                f,
                "bucket {}: key of {len} bytes (1 to {MAX_KEY_SIZE} allowed)",
                String::from_utf8_lossy(bucket)
            ),
            WriteError::ValueTooLarge { bucket, len } => write!(
                f,
                "bucket {}: value of {len} bytes (bbolt's limit is 2 GiB)",
                String::from_utf8_lossy(bucket)
            ),
            WriteError::DuplicateBucket(name) => {
                write!(f, "bucket {} written twice", String::from_utf8_lossy(name))
            }
        }
    }
}

impl std::error::Error for WriteError {}
