//! Reading a bbolt file held in memory: pick the meta page, then walk a
//! bucket's B+tree in key order. See the module doc for the format and
//! the invariants (bounded work, no panics on any input).

use super::{
    fnv64a, ReadError, BRANCH_PAGE, BUCKET_HEADER, BUCKET_LEAF_FLAG, ELEMENT, LEAF_PAGE, MAGIC,
    MAX_DEPTH, META_LEN, META_SUMMED, PAGE_HEADER, VERSION,
};

/// Page sizes tried for the second meta page when the first is unreadable
/// (bbolt falls back to the OS page size; any of these is one).
const FALLBACK_PAGE_SIZES: [usize; 5] = [4096, 16384, 65536, 8192, 1024];

/// A bbolt database over its file's bytes.
#[derive(Debug, Clone, Copy)]
pub struct Db<'a> {
    bytes: &'a [u8],
    page_size: usize,
    root: u64,
    high_water: u64,
    txid: u64,
}

/// Where a bucket's tree is: a page of the file, or inline in its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketRef<'a> {
    Paged(u64),
    /// The bytes of the bucket's single leaf page (header included).
    Inline(&'a [u8]),
}

/// One entry of a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry<'a> {
    Value(&'a [u8]),
    Bucket(BucketRef<'a>),
}

struct Meta {
    page_size: usize,
    root: u64,
    high_water: u64,
    txid: u64,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The meta in the page at `offset`, if it is a valid one.
fn parse_meta(bytes: &[u8], offset: usize) -> Result<Meta, String> {
    let m = offset
        .checked_add(PAGE_HEADER)
        .and_then(|start| bytes.get(start..start.checked_add(META_LEN)?))
        .ok_or("file too short for a meta page")?;
    let field32 = |at| u32_at(m, at).unwrap_or(0);
    let field64 = |at| u64_at(m, at).unwrap_or(0);
    if field32(0) != MAGIC {
        return Err("bad magic".into());
    }
    if field32(4) != VERSION {
        return Err(format!("version {} (want {VERSION})", field32(4)));
    }
    let checksum = field64(56);
    // bbolt accepts a zero checksum (written by old versions).
    if checksum != 0 && checksum != fnv64a(&m[..META_SUMMED]) {
        return Err("meta checksum mismatch".into());
    }
    let page_size = field32(8) as usize;
    if !(512..=1 << 20).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("page size {page_size}"));
    }
    Ok(Meta {
        page_size,
        root: field64(16),
        high_water: field64(40),
        txid: field64(48),
    })
}

impl<'a> Db<'a> {
    /// Opens the database in `bytes` (a whole file; bytes after the last
    /// page, such as etcd's sha256 trailer, are ignored).
    pub fn open(bytes: &'a [u8]) -> Result<Db<'a>, ReadError> {
        let meta0 = parse_meta(bytes, 0);
        let meta1 = match &meta0 {
            Ok(m) => parse_meta(bytes, m.page_size),
            Err(_) => FALLBACK_PAGE_SIZES
                .iter()
                .map(|size| {
                    parse_meta(bytes, *size).and_then(|m| {
                        if m.page_size == *size {
                            Ok(m)
                        } else {
                            Err("page size does not match its offset".into())
                        }
                    })
                })
                .find(Result::is_ok)
                .unwrap_or_else(|| Err("no second meta page".into())),
        };
        let meta = match (meta0, meta1) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(m), Err(_)) | (Err(_), Ok(m)) => m,
            (Err(e0), Err(e1)) => {
                return Err(ReadError::NotBbolt(format!("meta 0: {e0}; meta 1: {e1}")))
            }
        };
        let db = Db {
            bytes,
            page_size: meta.page_size,
            root: meta.root,
            high_water: meta.high_water,
            txid: meta.txid,
        };
        if meta.root < 2 || meta.root >= meta.high_water || meta.root >= db.pages_in_file() {
            return Err(ReadError::Corrupt {
                page: meta.root,
                reason: format!(
                    "root bucket page outside the file (high water {}, {} pages in file)",
                    meta.high_water,
                    db.pages_in_file()
                ),
            });
        }
        Ok(db)
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// The committed transaction the chosen meta page describes.
    pub fn txid(&self) -> u64 {
        self.txid
    }

    /// Bytes the database occupies (its high-water page count), as bbolt's
    /// `tx.Size()`.
    pub fn size(&self) -> u64 {
        self.high_water.saturating_mul(self.page_size as u64)
    }

    fn pages_in_file(&self) -> u64 {
        (self.bytes.len() / self.page_size) as u64
    }

    /// The root bucket, whose entries are the top-level buckets.
    pub fn root(&self) -> BucketRef<'a> {
        BucketRef::Paged(self.root)
    }

    /// The nested bucket `name` of `parent`, if there is one.
    pub fn bucket(
        &self,
        parent: BucketRef<'a>,
        name: &[u8],
    ) -> Result<Option<BucketRef<'a>>, ReadError> {
        let mut found = None;
        self.for_each(parent, &mut |key, entry| {
            if key == name {
                if let Entry::Bucket(b) = entry {
                    found = Some(b);
                }
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// How many entries `bucket` holds, from its leaf page headers alone
    /// (no entry is decoded): for sizing what the entries will go into.
    pub fn entry_count(&self, bucket: BucketRef<'a>) -> Result<usize, ReadError> {
        match bucket {
            BucketRef::Inline(page) => Ok(usize::from(u16_at(page, 10).unwrap_or(0))),
            BucketRef::Paged(root) => {
                let mut walk = self.walk();
                walk.count_only = true;
                walk.page(root, 0, &mut |_, _| Ok(()))?;
                Ok(walk.counted)
            }
        }
    }

    fn walk(&self) -> Walk<'_, 'a> {
        let words = usize::try_from(self.pages_in_file() / 64 + 1).unwrap_or(usize::MAX);
        Walk {
            db: self,
            visited: vec![0u64; words],
            count_only: false,
            counted: 0,
        }
    }

    /// Calls `f` on every entry of `bucket`, in the order of its pages
    /// (key order in a well-formed file). An error from `f` stops the walk
    /// and is returned.
    pub fn for_each(
        &self,
        bucket: BucketRef<'a>,
        f: &mut dyn FnMut(&'a [u8], Entry<'a>) -> Result<(), ReadError>,
    ) -> Result<(), ReadError> {
        match bucket {
            BucketRef::Inline(page) => {
                let flags = u16_at(page, 8).unwrap_or(0);
                if flags & LEAF_PAGE == 0 {
                    return Err(ReadError::Corrupt {
                        page: 0,
                        reason: format!("inline bucket page has flags {flags:#x}, not a leaf"),
                    });
                }
                let count = u16_at(page, 10).unwrap_or(0);
                leaf_entries(page, count, 0, f)
            }
            BucketRef::Paged(root) => self.walk().page(root, 0, f),
        }
    }
}

/// One walk of one tree: the pages seen so far (each may be seen once).
struct Walk<'d, 'a> {
    db: &'d Db<'a>,
    visited: Vec<u64>,
    /// Only add up leaf page counts into `counted`.
    count_only: bool,
    counted: usize,
}

impl<'a> Walk<'_, 'a> {
    fn page(
        &mut self,
        id: u64,
        depth: usize,
        f: &mut dyn FnMut(&'a [u8], Entry<'a>) -> Result<(), ReadError>,
    ) -> Result<(), ReadError> {
        let corrupt = |reason: String| ReadError::Corrupt { page: id, reason };
        if depth > MAX_DEPTH {
            return Err(corrupt(format!("tree deeper than {MAX_DEPTH} levels")));
        }
        if id < 2 || id >= self.db.high_water || id >= self.db.pages_in_file() {
            return Err(corrupt(format!(
                "page id outside the file (high water {}, {} pages in file)",
                self.db.high_water,
                self.db.pages_in_file()
            )));
        }
        let ps = self.db.page_size as u64;
        let start = id * ps; // id < pages_in_file, so no overflow
        let header = &self.db.bytes[start as usize..start as usize + PAGE_HEADER];
        let stored_id = u64_at(header, 0).unwrap_or(u64::MAX);
        let flags = u16_at(header, 8).unwrap_or(0);
        let count = u16_at(header, 10).unwrap_or(0);
        let overflow = u64::from(u32_at(header, 12).unwrap_or(0));
        if stored_id != id {
            return Err(corrupt(format!("header says page {stored_id}")));
        }
        let last = id
            .checked_add(overflow)
            .filter(|last| *last < self.db.pages_in_file() && *last < self.db.high_water)
            .ok_or_else(|| corrupt(format!("{overflow} overflow pages run past the file")))?;
        for p in id..=last {
            let (word, bit) = ((p / 64) as usize, p % 64);
            if self.visited[word] & (1 << bit) != 0 {
                return Err(corrupt(format!("page {p} referenced twice")));
            }
            self.visited[word] |= 1 << bit;
        }
        let end = (last + 1) * ps;
        let page = &self.db.bytes[start as usize..end as usize];
        if flags & BRANCH_PAGE != 0 {
            for i in 0..usize::from(count) {
                let at = PAGE_HEADER + i * ELEMENT;
                let child = u64_at(page, at + 8)
                    .ok_or_else(|| corrupt(format!("branch element {i} past the page")))?;
                self.page(child, depth + 1, f)?;
            }
            Ok(())
        } else if flags & LEAF_PAGE != 0 && self.count_only {
            // Every element takes 16 bytes of the page, so the total is
            // bounded by the file's size.
            if PAGE_HEADER + usize::from(count) * ELEMENT > page.len() {
                return Err(corrupt(format!("{count} elements do not fit the page")));
            }
            self.counted += usize::from(count);
            Ok(())
        } else if flags & LEAF_PAGE != 0 {
            leaf_entries(page, count, id, f)
        } else {
            Err(corrupt(format!(
                "flags {flags:#x}: not a branch or leaf page"
            )))
        }
    }
}

/// The entries of one leaf page (`page` includes its header and overflow).
fn leaf_entries<'a>(
    page: &'a [u8],
    count: u16,
    id: u64,
    f: &mut dyn FnMut(&'a [u8], Entry<'a>) -> Result<(), ReadError>,
) -> Result<(), ReadError> {
    let corrupt = |reason: String| ReadError::Corrupt { page: id, reason };
    for i in 0..usize::from(count) {
        let at = PAGE_HEADER + i * ELEMENT;
        let (Some(flags), Some(pos), Some(ksize), Some(vsize)) = (
            u32_at(page, at),
            u32_at(page, at + 4),
            u32_at(page, at + 8),
            u32_at(page, at + 12),
        ) else {
            return Err(corrupt(format!("leaf element {i} past the page")));
        };
        let key_start = at.checked_add(pos as usize);
        let key_end = key_start.and_then(|s| s.checked_add(ksize as usize));
        let value_end = key_end.and_then(|s| s.checked_add(vsize as usize));
        let (Some(key_start), Some(key_end), Some(value_end)) = (key_start, key_end, value_end)
        else {
            return Err(corrupt(format!("leaf element {i}: sizes overflow")));
        };
        let (Some(key), Some(value)) = (page.get(key_start..key_end), page.get(key_end..value_end))
        else {
            return Err(corrupt(format!(
                "leaf element {i}: key or value past the page"
            )));
        };
        let entry = if flags & BUCKET_LEAF_FLAG != 0 {
            let root = u64_at(value, 0)
                .filter(|_| value.len() >= BUCKET_HEADER)
                .ok_or_else(|| corrupt(format!("leaf element {i}: short bucket header")))?;
            if root == 0 {
                let inline = &value[BUCKET_HEADER..];
                if inline.len() < PAGE_HEADER {
                    return Err(corrupt(format!("leaf element {i}: short inline bucket")));
                }
                Entry::Bucket(BucketRef::Inline(inline))
            } else {
                Entry::Bucket(BucketRef::Paged(root))
            }
        } else {
            Entry::Value(value)
        };
        f(key, entry)?;
    }
    Ok(())
}
