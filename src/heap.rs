//! The process heap's side of "memory near the data's own size": freed
//! memory goes back to the operating system instead of staying resident.
//!
//! With glibc's defaults a large buffer freed once (a WAL segment or a
//! snapshot file read at recovery) raises the threshold above which
//! buffers get their own mapping, so the next ones of that size come from
//! the heap and, freed, stay resident behind the live data allocated
//! after them: a restarted node held its recovery buffers for good.
//! [`init`] fixes the threshold (large buffers are always their own
//! mapping, unmapped on free); [`release_free`] returns the free pages
//! inside the heap after a burst of short-lived small allocations (a
//! recovery's decoded records). Elsewhere (other C libraries) both do
//! nothing. Invariant: neither changes what any allocation holds.

/// Buffers of at least this many bytes get a mapping of their own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 1024 * 1024;

/// Call once, first thing in `main`.
pub fn init() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only reads its two integer arguments and changes the
    // allocator's tuning, for allocations made from now on.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Gives the free pages of the heap back to the operating system.
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes an integer and only returns whole free
    // pages of the allocator's own heaps; live allocations are untouched.
    unsafe {
        libc::malloc_trim(0);
    }
}
