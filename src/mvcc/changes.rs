//! A key's history of several changes: a thin, shared, growable array of
//! [`ChangeRef`]s in one allocation.
//!
//! [`Changes`] is one pointer to `[count][len][cap]` followed by `cap`
//! slots, the first `len` of them changes. It replaces an
//! `Arc<Vec<ChangeRef>>`, which is two allocations (the `Arc`'s counts and
//! the vector's header, then the vector's buffer): reading a key's first
//! change, which the key map does at every comparison of a search, took
//! three dependent loads (counts, buffer, change) and takes two here (the
//! first slot shares a cache line with the header), and a key with a
//! history costs one allocation less.
//!
//! Invariants: `len <= cap`; the first `len` slots are initialized and each
//! owns one reference to its block; the count is the number of live
//! `Changes` values pointing at the allocation, which is freed (with the
//! references its slots own) when the last one drops. A change is made
//! only through `&mut self`, and first unshares the array (copies it, as
//! `Arc::make_mut` does, when another value points at it), so a clone
//! held by a snapshot never sees a later write. The count overflowing
//! would need `usize::MAX / 2` pointers; reaching that aborts the process,
//! as `Arc` does.

use std::alloc::{alloc, dealloc, handle_alloc_error, realloc, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicUsize, Ordering};

use super::key_index::ChangeRef;

#[repr(C)]
struct Header {
    count: AtomicUsize,
    len: u32,
    cap: u32,
}

/// Bytes before the first slot: the header, a multiple of a pointer's
/// alignment (16 on 64-bit targets, 12 on 32-bit ones), so the slots that
/// follow are aligned.
const HEADER: usize = std::mem::size_of::<Header>();
const SLOT: usize = std::mem::size_of::<ChangeRef>();

fn layout(cap: usize) -> Layout {
    // `cap` is at most u32::MAX slots of a pointer each, which fits in a
    // 64-bit usize; on 32-bit targets an impossible size aborts instead.
    match Layout::from_size_align(
        HEADER.saturating_add(cap.saturating_mul(SLOT)),
        std::mem::align_of::<Header>(),
    ) {
        Ok(layout) => layout,
        Err(_) => std::process::abort(),
    }
}

/// See the module doc. Never null; aligned for its header (4 or 8 bytes),
/// so bit 0 of the pointer is free for `key_index`'s tag.
#[repr(transparent)]
pub(crate) struct Changes {
    ptr: NonNull<Header>,
}

// SAFETY: as `Arc<Vec<ChangeRef>>`: the slots are changed only through a
// unique `&mut` (after unsharing), the count is atomic, and `ChangeRef` is
// Send and Sync.
unsafe impl Send for Changes {}
// SAFETY: as above.
unsafe impl Sync for Changes {}

impl Changes {
    /// An array of exactly `changes`, with no spare slot.
    pub(crate) fn from_exact(changes: impl ExactSizeIterator<Item = ChangeRef>) -> Changes {
        let mut out = Changes::with_capacity(changes.len());
        for change in changes {
            out.push_unique(change);
        }
        out
    }

    fn with_capacity(cap: usize) -> Changes {
        let Ok(cap32) = u32::try_from(cap) else {
            // Four billion changes of one key: never reached.
            std::process::abort()
        };
        let layout = layout(cap);
        // SAFETY: the layout has a non-zero size (the header).
        let raw = unsafe { alloc(layout) };
        let Some(ptr) = NonNull::new(raw.cast::<Header>()) else {
            handle_alloc_error(layout)
        };
        // SAFETY: a fresh allocation large enough for the header.
        unsafe {
            ptr.as_ptr().write(Header {
                count: AtomicUsize::new(1),
                len: 0,
                cap: cap32,
            })
        };
        Changes { ptr }
    }

    fn header(&self) -> &Header {
        // SAFETY: the allocation lives while this value does.
        unsafe { self.ptr.as_ref() }
    }

    fn slots(&self) -> *mut ChangeRef {
        // SAFETY: the slots start right after the header, inside the
        // allocation (see `layout`).
        unsafe {
            self.ptr
                .as_ptr()
                .cast::<u8>()
                .add(HEADER)
                .cast::<ChangeRef>()
        }
    }

    fn len(&self) -> usize {
        self.header().len as usize
    }

    fn cap(&self) -> usize {
        self.header().cap as usize
    }

    pub(crate) fn as_slice(&self) -> &[ChangeRef] {
        // SAFETY: the first `len` slots are initialized and are changed
        // only through `&mut self`.
        unsafe { std::slice::from_raw_parts(self.slots(), self.len()) }
    }

    fn is_unique(&self) -> bool {
        // Acquire, as `Arc::get_mut`: see the other owners' drops first.
        self.header().count.load(Ordering::Acquire) == 1
    }

    /// Makes this value the only owner, with room for `cap` slots (at
    /// least `len`): a copy when shared, else a reallocation when the
    /// capacity differs.
    fn unshare_with_capacity(&mut self, cap: usize) {
        let cap = cap.max(self.len());
        if !self.is_unique() {
            let mut copy = Changes::with_capacity(cap);
            for change in self.as_slice() {
                copy.push_unique(change.clone());
            }
            // Drops our reference to the shared array.
            *self = copy;
            return;
        }
        if cap == self.cap() {
            return;
        }
        let Ok(cap32) = u32::try_from(cap) else {
            std::process::abort()
        };
        let (old, new) = (layout(self.cap()), layout(cap));
        // SAFETY: the allocation was made with `old` (same alignment); we
        // are its only owner; the slots are plain pointers, so moving them
        // with the bytes is sound.
        let raw = unsafe { realloc(self.ptr.as_ptr().cast::<u8>(), old, new.size()) };
        let Some(ptr) = NonNull::new(raw.cast::<Header>()) else {
            handle_alloc_error(new)
        };
        self.ptr = ptr;
        // SAFETY: unique (above); the header survived the reallocation.
        unsafe { (*self.ptr.as_ptr()).cap = cap32 };
    }

    /// Appends into a spare slot of an array this value alone owns.
    fn push_unique(&mut self, change: ChangeRef) {
        let len = self.len();
        debug_assert!(len < self.cap() && self.is_unique());
        if len >= self.cap() {
            // Callers make room first; never leak or overrun if one did not.
            std::process::abort();
        }
        // SAFETY: slot `len` is inside the allocation (len < cap) and not
        // initialized; we own the array alone.
        unsafe {
            self.slots().add(len).write(change);
            (*self.ptr.as_ptr()).len += 1;
        }
    }

    /// Appends a change: exact room while short (most keys keep a few
    /// changes), doubling from four on.
    pub(crate) fn push(&mut self, change: ChangeRef) {
        let len = self.len();
        let cap = if len < self.cap() {
            self.cap()
        } else if len < 4 {
            len + 1
        } else {
            len.saturating_mul(2)
        };
        self.unshare_with_capacity(cap);
        self.push_unique(change);
    }

    /// Removes the newest change.
    pub(crate) fn pop(&mut self) -> Option<ChangeRef> {
        let len = self.len().checked_sub(1)?;
        self.unshare_with_capacity(self.cap());
        // SAFETY: slot `len` was the last initialized one; lowering `len`
        // first hands its reference to the value read out.
        unsafe {
            (*self.ptr.as_ptr()).len -= 1;
            Some(self.slots().add(len).read())
        }
    }

    /// Drops the oldest `n` changes (all if fewer) and frees the slots
    /// left spare.
    pub(crate) fn drain_front(&mut self, n: usize) {
        let len = self.len();
        let n = n.min(len);
        let keep = len - n;
        if !self.is_unique() {
            let mut copy = Changes::with_capacity(keep);
            for change in &self.as_slice()[n..] {
                copy.push_unique(change.clone());
            }
            *self = copy;
            return;
        }
        // SAFETY: unique; slots `..n` are dropped once (their references
        // released), then the `keep` slots after them move down (a plain
        // copy of pointers) and `len` says which are initialized.
        unsafe {
            (*self.ptr.as_ptr()).len = 0;
            std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(self.slots(), n));
            std::ptr::copy(self.slots().add(n), self.slots(), keep);
            (*self.ptr.as_ptr()).len = keep as u32;
        }
        self.unshare_with_capacity(keep);
    }

    /// The pointer, giving up this reference (see [`Changes::from_raw`]).
    pub(crate) fn into_raw(self) -> NonNull<u8> {
        let me = std::mem::ManuallyDrop::new(self);
        me.ptr.cast()
    }

    /// The array behind a pointer from [`Changes::into_raw`], taking back
    /// the reference it gave up.
    ///
    /// # Safety
    /// `raw` comes from `into_raw` and is given back at most once.
    pub(crate) unsafe fn from_raw(raw: NonNull<u8>) -> Changes {
        Changes { ptr: raw.cast() }
    }

    /// The changes behind a pointer from [`Changes::into_raw`], without
    /// taking its reference.
    ///
    /// # Safety
    /// `raw` comes from `into_raw` and its reference is not given back
    /// while the returned borrow lives.
    pub(crate) unsafe fn slice_from_raw<'a>(raw: NonNull<u8>) -> &'a [ChangeRef] {
        let me = std::mem::ManuallyDrop::new(Changes { ptr: raw.cast() });
        // SAFETY: the caller keeps the allocation alive for 'a.
        unsafe { std::slice::from_raw_parts(me.slots(), me.len()) }
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.cap()
    }
}

impl Clone for Changes {
    fn clone(&self) -> Changes {
        // Relaxed as in `Arc::clone`.
        let old = self.header().count.fetch_add(1, Ordering::Relaxed);
        if old >= usize::MAX / 2 {
            std::process::abort();
        }
        Changes { ptr: self.ptr }
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        if self.header().count.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        fence(Ordering::Acquire);
        let layout = layout(self.cap());
        // SAFETY: the last reference: the initialized slots are dropped
        // once and the allocation freed with the layout it was made with.
        unsafe {
            std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(self.slots(), self.len()));
            dealloc(self.ptr.as_ptr().cast::<u8>(), layout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::Revision;

    fn change(main: i64) -> ChangeRef {
        ChangeRef::new(b"k", Revision::new(main, 0), 1, main, 0, b"v").expect("small")
    }

    fn mains(c: &Changes) -> Vec<i64> {
        c.as_slice().iter().map(ChangeRef::main).collect()
    }

    #[test]
    fn grows_pops_and_drains_like_a_vec_and_clones_stay_put() {
        let mut c = Changes::from_exact([change(1), change(2)].into_iter());
        assert_eq!(c.capacity(), 2);
        let frozen = c.clone();
        for m in 3..=10 {
            c.push(change(m));
        }
        assert_eq!(mains(&c), (1..=10).collect::<Vec<_>>());
        assert_eq!(mains(&frozen), [1, 2]);
        assert!(c.capacity() >= 10 && c.capacity() <= 16);
        let before_pop = c.clone();
        assert_eq!(c.pop().map(|x| x.main()), Some(10));
        assert_eq!(mains(&before_pop), (1..=10).collect::<Vec<_>>());
        c.drain_front(3);
        assert_eq!(mains(&c), (4..=9).collect::<Vec<_>>());
        assert_eq!(c.capacity(), 6);
        let shared = c.clone();
        c.drain_front(4);
        assert_eq!(mains(&c), [8, 9]);
        assert_eq!(mains(&shared), (4..=9).collect::<Vec<_>>());
        c.drain_front(5);
        assert!(c.as_slice().is_empty());
        assert_eq!(c.pop().map(|x| x.main()), None);
    }

    #[test]
    fn every_block_is_released_once() {
        let probe = change(1);
        let later = change(2);
        {
            let mut c = Changes::from_exact(std::iter::once(probe.clone()));
            c.push(later.clone());
            for m in 3..40 {
                c.push(change(m));
            }
            assert_eq!((probe.ref_count(), later.ref_count()), (2, 2));
            let copy = c.clone();
            c.push(change(40));
            // The push unshared: both arrays hold the two blocks.
            assert_eq!((probe.ref_count(), later.ref_count()), (3, 3));
            drop(copy);
            assert_eq!((probe.ref_count(), later.ref_count()), (2, 2));
            c.drain_front(1);
            assert_eq!((probe.ref_count(), later.ref_count()), (1, 2));
            assert_eq!(c.pop().map(|x| x.main()), Some(40));
        }
        assert_eq!((probe.ref_count(), later.ref_count()), (1, 1));
    }
}
