//! Writing a fresh bbolt file into memory, one bucket at a time, keys in
//! increasing order. Pages are laid out as: two meta pages, an empty
//! freelist page, then each bucket's leaf pages followed by its branch
//! pages, then the root bucket's pages. Leaves are packed full (bbolt reads
//! any fill; it re-splits nodes as it writes them). A bucket small enough
//! (bbolt's rule: one leaf of at most a quarter page) is stored inline in
//! the root bucket, as bbolt does for small buckets.

use super::{
    fnv64a, WriteError, BRANCH_PAGE, BUCKET_HEADER, BUCKET_LEAF_FLAG, ELEMENT, FREELIST_PAGE,
    LEAF_PAGE, MAGIC, MAX_KEY_SIZE, META_PAGE, META_SUMMED, PAGE_HEADER, VERSION,
};

/// bbolt's largest value.
const MAX_VALUE_SIZE: usize = (1 << 31) - 2;
/// First page after the metas and the freelist.
const FIRST_DATA_PAGE: u64 = 3;
const FREELIST_PAGE_ID: u64 = 2;

/// A database being written.
pub struct DbWriter {
    out: Vec<u8>,
    page_size: usize,
    /// Top-level buckets written so far: name → bucket value.
    root_entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Entries of the leaf page being filled.
struct Leaf {
    /// (flags, key range, value range) in `data`.
    items: Vec<(u32, usize, usize, usize)>,
    data: Vec<u8>,
}

impl Leaf {
    fn new() -> Leaf {
        Leaf {
            items: Vec::new(),
            data: Vec::new(),
        }
    }

    fn size(&self) -> usize {
        PAGE_HEADER + self.items.len() * ELEMENT + self.data.len()
    }

    fn push(&mut self, flags: u32, key: &[u8], value: &[u8]) {
        let k = self.data.len();
        self.data.extend_from_slice(key);
        let v = self.data.len();
        self.data.extend_from_slice(value);
        self.items.push((flags, k, v, self.data.len()));
    }

    fn first_key(&self) -> Vec<u8> {
        self.items
            .first()
            .map(|(_, k, v, _)| self.data[*k..*v].to_vec())
            .unwrap_or_default()
    }

    /// The page's bytes (header with `id`, elements, data), unpadded.
    fn encode(&self, id: u64) -> Vec<u8> {
        let mut page = Vec::with_capacity(self.size());
        page_header(&mut page, id, LEAF_PAGE, self.items.len(), 0);
        let data_start = PAGE_HEADER + self.items.len() * ELEMENT;
        for (i, (flags, k, v, end)) in self.items.iter().enumerate() {
            let element = PAGE_HEADER + i * ELEMENT;
            let pos = data_start + k - element;
            page.extend_from_slice(&flags.to_le_bytes());
            page.extend_from_slice(&(pos as u32).to_le_bytes());
            page.extend_from_slice(&((v - k) as u32).to_le_bytes());
            page.extend_from_slice(&((end - v) as u32).to_le_bytes());
        }
        page.extend_from_slice(&self.data);
        page
    }
}

fn page_header(out: &mut Vec<u8>, id: u64, flags: u16, count: usize, overflow: u32) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    // A page never holds 65535 elements: at least 16 bytes each, and pages
    // are filled to the page size only (overflow pages hold one or two).
    out.extend_from_slice(&(count.min(usize::from(u16::MAX)) as u16).to_le_bytes());
    out.extend_from_slice(&overflow.to_le_bytes());
}

impl Default for DbWriter {
    fn default() -> Self {
        DbWriter::new(super::DEFAULT_PAGE_SIZE)
    }
}

impl DbWriter {
    /// `page_size` must be a power of two of at least 1024.
    pub fn new(page_size: usize) -> DbWriter {
        let page_size = page_size.max(1024).next_power_of_two();
        DbWriter {
            out: vec![0u8; FIRST_DATA_PAGE as usize * page_size],
            page_size,
            root_entries: Vec::new(),
        }
    }

    fn next_page(&self) -> u64 {
        (self.out.len() / self.page_size) as u64
    }

    /// Appends a page (and its overflow) and returns its id; `page` holds
    /// the header with overflow 0, which is patched here.
    fn append_page(&mut self, mut page: Vec<u8>) -> u64 {
        let id = self.next_page();
        page[0..8].copy_from_slice(&id.to_le_bytes());
        let pages = page.len().div_ceil(self.page_size).max(1);
        let overflow = u32::try_from(pages - 1).unwrap_or(u32::MAX);
        page[12..16].copy_from_slice(&overflow.to_le_bytes());
        page.resize(pages * self.page_size, 0);
        self.out.extend_from_slice(&page);
        id
    }

    /// Starts the top-level bucket `name`; its keys go through the
    /// returned writer, which must be finished.
    pub fn bucket(&mut self, name: &[u8]) -> Result<BucketWriter<'_>, WriteError> {
        if self.root_entries.iter().any(|(n, _)| n == name) {
            return Err(WriteError::DuplicateBucket(name.to_vec()));
        }
        if name.is_empty() || name.len() > MAX_KEY_SIZE {
            return Err(WriteError::BadKey {
                bucket: Vec::new(),
                len: name.len(),
            });
        }
        Ok(BucketWriter {
            tree: TreeWriter::new(name.to_vec()),
            db: self,
        })
    }

    /// Writes the root bucket, the freelist and the metas; the file's bytes.
    pub fn finish(mut self) -> Result<Vec<u8>, WriteError> {
        let mut entries = std::mem::take(&mut self.root_entries);
        entries.sort();
        let mut root = TreeWriter::new(Vec::new());
        for (name, value) in &entries {
            root.push(&mut self, BUCKET_LEAF_FLAG, name, value)?;
        }
        let root_page = root.finish_paged(&mut self);
        let high_water = self.next_page();

        let ps = self.page_size;
        let mut freelist = Vec::with_capacity(PAGE_HEADER);
        page_header(&mut freelist, FREELIST_PAGE_ID, FREELIST_PAGE, 0, 0);
        let at = FREELIST_PAGE_ID as usize * ps;
        self.out[at..at + PAGE_HEADER].copy_from_slice(&freelist);

        for txid in 0..2u64 {
            let mut meta = Vec::with_capacity(PAGE_HEADER + 64);
            page_header(&mut meta, txid, META_PAGE, 0, 0);
            let m = meta.len();
            meta.extend_from_slice(&MAGIC.to_le_bytes());
            meta.extend_from_slice(&VERSION.to_le_bytes());
            meta.extend_from_slice(&(ps as u32).to_le_bytes());
            meta.extend_from_slice(&0u32.to_le_bytes()); // flags
            meta.extend_from_slice(&root_page.to_le_bytes());
            meta.extend_from_slice(&0u64.to_le_bytes()); // root sequence
            meta.extend_from_slice(&FREELIST_PAGE_ID.to_le_bytes());
            meta.extend_from_slice(&high_water.to_le_bytes());
            meta.extend_from_slice(&txid.to_le_bytes());
            let sum = fnv64a(&meta[m..m + META_SUMMED]);
            meta.extend_from_slice(&sum.to_le_bytes());
            let at = txid as usize * ps;
            self.out[at..at + meta.len()].copy_from_slice(&meta);
        }
        Ok(self.out)
    }
}

/// One top-level bucket being written.
pub struct BucketWriter<'w> {
    db: &'w mut DbWriter,
    tree: TreeWriter,
}

impl BucketWriter<'_> {
    /// Adds a key; keys must come in strictly increasing order.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), WriteError> {
        self.tree.push(self.db, 0, key, value)
    }

    /// Writes what is pending and records the bucket in the root.
    pub fn finish(self) -> Result<(), WriteError> {
        let BucketWriter { db, tree } = self;
        let name = tree.name.clone();
        let value = if tree.level0.is_empty() && tree.leaf.size() <= db.page_size / 4 {
            // Inline: header with root 0, then the leaf page (id 0).
            let mut value = vec![0u8; BUCKET_HEADER];
            value.extend_from_slice(&tree.leaf.encode(0));
            value
        } else {
            let root = tree.finish_paged(db);
            let mut value = root.to_le_bytes().to_vec();
            value.extend_from_slice(&0u64.to_le_bytes());
            value
        };
        db.root_entries.push((name, value));
        Ok(())
    }
}

/// A B+tree written bottom-up: full leaves as keys arrive, then branch
/// levels over them.
struct TreeWriter {
    name: Vec<u8>,
    leaf: Leaf,
    last_key: Option<Vec<u8>>,
    /// (first key, page id) of every leaf written.
    level0: Vec<(Vec<u8>, u64)>,
}

impl TreeWriter {
    fn new(name: Vec<u8>) -> TreeWriter {
        TreeWriter {
            name,
            leaf: Leaf::new(),
            last_key: None,
            level0: Vec::new(),
        }
    }

    fn push(
        &mut self,
        db: &mut DbWriter,
        flags: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), WriteError> {
        if key.is_empty() || key.len() > MAX_KEY_SIZE {
            return Err(WriteError::BadKey {
                bucket: self.name.clone(),
                len: key.len(),
            });
        }
        if value.len() > MAX_VALUE_SIZE {
            return Err(WriteError::ValueTooLarge {
                bucket: self.name.clone(),
                len: value.len(),
            });
        }
        if self.last_key.as_deref().is_some_and(|last| last >= key) {
            return Err(WriteError::Unsorted {
                bucket: self.name.clone(),
            });
        }
        let grown = self.leaf.size() + ELEMENT + key.len() + value.len();
        if !self.leaf.items.is_empty() && grown > db.page_size {
            self.flush_leaf(db);
        }
        self.leaf.push(flags, key, value);
        match &mut self.last_key {
            Some(last) => {
                last.clear();
                last.extend_from_slice(key);
            }
            None => self.last_key = Some(key.to_vec()),
        }
        Ok(())
    }

    fn flush_leaf(&mut self, db: &mut DbWriter) {
        let first = self.leaf.first_key();
        let id = db.append_page(self.leaf.encode(0));
        self.level0.push((first, id));
        self.leaf = Leaf::new();
    }

    /// Writes the pending leaf (even an empty one, for an empty tree) and
    /// the branch levels; the root page's id.
    fn finish_paged(mut self, db: &mut DbWriter) -> u64 {
        if !self.leaf.items.is_empty() || self.level0.is_empty() {
            self.flush_leaf(db);
        }
        let mut level = self.level0;
        while level.len() > 1 {
            let mut next = Vec::new();
            let mut rest = &level[..];
            while !rest.is_empty() {
                // At least two children per branch page, so each level is
                // at most half the one below.
                let mut n = 0;
                let mut size = PAGE_HEADER;
                while n < rest.len() {
                    let grown = size + ELEMENT + rest[n].0.len();
                    if n >= 2 && grown > db.page_size {
                        break;
                    }
                    size = grown;
                    n += 1;
                }
                // Never leave a single child for a page of its own.
                if rest.len() - n == 1 {
                    n += 1;
                }
                let (children, tail) = rest.split_at(n.min(rest.len()));
                next.push((children[0].0.clone(), db.append_page(branch_page(children))));
                rest = tail;
            }
            level = next;
        }
        level.first().map(|(_, id)| *id).unwrap_or(FIRST_DATA_PAGE)
    }
}

fn branch_page(children: &[(Vec<u8>, u64)]) -> Vec<u8> {
    let mut page = Vec::new();
    page_header(&mut page, 0, BRANCH_PAGE, children.len(), 0);
    let data_start = PAGE_HEADER + children.len() * ELEMENT;
    let mut offset = data_start;
    for (i, (key, id)) in children.iter().enumerate() {
        let element = PAGE_HEADER + i * ELEMENT;
        page.extend_from_slice(&((offset - element) as u32).to_le_bytes());
        page.extend_from_slice(&(key.len() as u32).to_le_bytes());
        page.extend_from_slice(&id.to_le_bytes());
        offset += key.len();
    }
    for (key, _) in children {
        page.extend_from_slice(key);
    }
    page
}
