//! A thin, shared, immutable byte string: the key space's unit of memory.
//!
//! A [`Block`] is one pointer (8 bytes) to one allocation that holds a
//! 4-byte reference count, a 4-byte length and the bytes. `Arc<[u8]>` is a
//! 16-byte pointer to 16 bytes of counts before the bytes, and a key space
//! holds millions of these (one per kept change, pointed at from its key's
//! index and from the revision log): the thin form saves 8 bytes in every
//! slot that points at one and 8 in every allocation.
//!
//! A block may also own an `Arc<Backing>` (see `backing`): the bytes it
//! holds then point into the backing, which must live as long as they do.
//! The pointer sits unaligned after the bytes, flagged by the length's top
//! bit, so a block without one pays nothing for the option.
//!
//! Invariants: the bytes never change after [`Block::new`]; the count is
//! the number of live `Block` values pointing at the allocation, which is
//! freed when the last one drops (releasing its backing, if it owns one).
//! The count saturating at `u32::MAX` would need four billion pointers
//! (32 GB of them), so reaching it aborts the process rather than risk a
//! use after free, as `Arc` does at `isize::MAX`.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::Arc;

use super::backing::Backing;

#[repr(C)]
struct Header {
    count: AtomicU32,
    /// The bytes' length, with [`OWNS_BACKING`] set if a backing's pointer
    /// follows them.
    len: u32,
}

/// Set in `Header::len` when the block owns an `Arc<Backing>`.
const OWNS_BACKING: u32 = 1 << 31;
const OWNER: usize = std::mem::size_of::<*const Backing>();

/// Thin shared bytes (see the module doc). One pointer, never null and
/// always even (the allocation is aligned for its 4-byte header), which
/// `key_index` relies on to tell a block's word from a tagged one.
#[repr(transparent)]
pub(crate) struct Block {
    ptr: NonNull<Header>,
}

// SAFETY: the bytes are immutable and the count is atomic, exactly as for
// `Arc<[u8]>`, which is Send and Sync.
unsafe impl Send for Block {}
// SAFETY: as above.
unsafe impl Sync for Block {}

const HEADER: usize = std::mem::size_of::<Header>();

/// The allocation for a header field `len` (flag included).
fn layout(len: u32) -> Layout {
    let bytes = (len & !OWNS_BACKING) as usize;
    let owner = if len & OWNS_BACKING != 0 { OWNER } else { 0 };
    // Cannot fail: the size is below 2^32 + 16, alignment 4.
    Layout::from_size_align(HEADER + bytes + owner, std::mem::align_of::<Header>())
        .unwrap_or_else(|_| Layout::new::<Header>())
}

impl Block {
    /// A block holding `parts` one after another. Bytes past 2 GiB in all
    /// do not fit and are refused (a value is at most a few MiB; the
    /// caller turns `None` into an error).
    pub(crate) fn new(parts: &[&[u8]]) -> Option<Block> {
        Block::make(parts, None)
    }

    /// [`Block::new`], owning `backing` until the block is freed: for
    /// bytes that locate something in the backing.
    pub(crate) fn with_backing(parts: &[&[u8]], backing: Arc<Backing>) -> Option<Block> {
        Block::make(parts, Some(backing))
    }

    fn make(parts: &[&[u8]], backing: Option<Arc<Backing>>) -> Option<Block> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len32 = u32::try_from(len).ok().filter(|l| l & OWNS_BACKING == 0)?;
        let field = len32 | if backing.is_some() { OWNS_BACKING } else { 0 };
        let layout = layout(field);
        // SAFETY: the layout has a non-zero size (the header).
        let raw = unsafe { alloc(layout) };
        let Some(ptr) = NonNull::new(raw.cast::<Header>()) else {
            handle_alloc_error(layout)
        };
        // SAFETY: `raw` is a fresh allocation of HEADER + len bytes aligned
        // for Header; we write the header, then exactly `len` bytes after it.
        unsafe {
            ptr.as_ptr().write(Header {
                count: AtomicU32::new(1),
                len: field,
            });
            let mut at = raw.add(HEADER);
            for part in parts {
                std::ptr::copy_nonoverlapping(part.as_ptr(), at, part.len());
                at = at.add(part.len());
            }
            // The layout has room for the pointer when a backing is given.
            if let Some(backing) = backing {
                at.cast::<*const Backing>()
                    .write_unaligned(Arc::into_raw(backing));
            }
        }
        Some(Block { ptr })
    }

    fn header(&self) -> &Header {
        // SAFETY: the allocation lives while this Block does.
        unsafe { self.ptr.as_ref() }
    }

    fn bytes_ptr(&self) -> *const u8 {
        // SAFETY: the bytes start right after the header, in the allocation.
        unsafe { self.ptr.as_ptr().cast::<u8>().add(HEADER) }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        let len = (self.header().len & !OWNS_BACKING) as usize;
        // SAFETY: `len` initialized bytes follow the header (see `make`)
        // and are never written again.
        unsafe { std::slice::from_raw_parts(self.bytes_ptr(), len) }
    }

    /// The backing this block owns, if any.
    pub(crate) fn backing(&self) -> Option<&Backing> {
        let len = self.header().len;
        if len & OWNS_BACKING == 0 {
            return None;
        }
        // SAFETY: with the flag set, `make` wrote an `Arc::into_raw`
        // pointer right after the bytes; the block holds that reference
        // until it is freed, so the backing outlives `&self`.
        unsafe {
            let at = self.bytes_ptr().add((len & !OWNS_BACKING) as usize);
            Some(&*at.cast::<*const Backing>().read_unaligned())
        }
    }

    /// The pointer, giving up this reference (see [`Block::from_raw`]).
    pub(crate) fn into_raw(self) -> NonNull<u8> {
        let me = std::mem::ManuallyDrop::new(self);
        me.ptr.cast()
    }

    /// The block behind a pointer from [`Block::into_raw`], taking back
    /// the reference it gave up.
    ///
    /// # Safety
    /// `raw` comes from `into_raw` and is given back at most once.
    pub(crate) unsafe fn from_raw(raw: NonNull<u8>) -> Block {
        Block { ptr: raw.cast() }
    }

    /// Whether both point at the same allocation.
    #[cfg(test)]
    pub(crate) fn ptr_eq(&self, other: &Block) -> bool {
        self.ptr == other.ptr
    }

    /// How many `Block`s point at this allocation.
    #[cfg(test)]
    pub(crate) fn ref_count(&self) -> u32 {
        self.header().count.load(Ordering::Relaxed)
    }

    /// Bytes of the allocation of a block of `len` bytes without a
    /// backing, as malloc sees it: what the quota estimate counts for one.
    pub(crate) fn alloc_bytes(len: usize) -> u64 {
        (HEADER + len) as u64
    }
}

impl Clone for Block {
    fn clone(&self) -> Block {
        // Relaxed as in `Arc::clone`: a new reference is made from an
        // existing one, so the allocation cannot be freed meanwhile.
        let old = self.header().count.fetch_add(1, Ordering::Relaxed);
        if old >= u32::MAX / 2 {
            // See the module doc: never reached in practice.
            std::process::abort();
        }
        Block { ptr: self.ptr }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if self.header().count.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        // As in `Arc::drop`: see every other owner's last use first.
        fence(Ordering::Acquire);
        let len = self.header().len;
        if let Some(backing) = self.backing() {
            // SAFETY: this was the last reference to the block, which held
            // one reference to the backing, given back exactly once here.
            drop(unsafe { Arc::from_raw(backing as *const Backing) });
        }
        // SAFETY: this was the last reference; the allocation was made in
        // `make` with this same layout.
        unsafe { dealloc(self.ptr.as_ptr().cast::<u8>(), layout(len)) }
    }
}

impl std::ops::Deref for Block {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for Block {
    fn eq(&self, other: &Block) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Block {}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_its_parts_and_frees_with_the_last_owner() {
        let a = Block::new(&[b"ab", b"", b"cde"]).expect("block");
        assert_eq!(&*a, b"abcde");
        let b = a.clone();
        assert!(a.ptr_eq(&b));
        assert_eq!(a.header().count.load(Ordering::Relaxed), 2);
        drop(a);
        assert_eq!(&*b, b"abcde");
        assert_eq!(b.header().count.load(Ordering::Relaxed), 1);
        let empty = Block::new(&[]).expect("empty");
        assert!(empty.is_empty());
        assert!(Block::new(&[b"a"]).expect("a") != Block::new(&[b"b"]).expect("b"));
        assert_eq!(std::mem::size_of::<Block>(), 8);
        assert_eq!(std::mem::size_of::<Option<Block>>(), 8);
    }

    #[test]
    fn a_backing_lives_as_long_as_the_blocks_that_own_it() {
        let backing = Backing::new(b"the value".to_vec());
        let a = Block::with_backing(&[b"key", b"\x04"], backing.clone()).expect("block");
        assert_eq!(Arc::strong_count(&backing), 2);
        assert_eq!(&*a, b"key\x04");
        assert_eq!(a.backing().map(Backing::bytes), Some(&b"the value"[..]));
        assert!(Block::new(&[b"key"]).expect("plain").backing().is_none());
        let b = a.clone();
        drop(a);
        assert_eq!(Arc::strong_count(&backing), 2);
        assert_eq!(b.backing().map(|x| x.bytes().len()), Some(9));
        drop(b);
        assert_eq!(Arc::strong_count(&backing), 1);
    }

    #[test]
    fn shared_across_threads() {
        let a = Block::new(&[b"shared"]).expect("block");
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let a = a.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        let c = a.clone();
                        assert_eq!(&*c, b"shared");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        assert_eq!(a.header().count.load(Ordering::Relaxed), 1);
    }
}
