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
//! recovery's decoded records). [`QuietTrim`] says when to call it on a
//! running node: once applies have paused after a burst of writes, whose
//! requests, entries and connection buffers were freed in between the
//! blocks the key space keeps. Elsewhere (other C libraries) `init` and
//! `release_free` do nothing. Invariant: none of them changes what any
//! allocation holds.

use std::time::{Duration, Instant};

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

/// Applies must have paused this long before the heap is trimmed: a trim
/// walks every free chunk under the allocator's locks, so it waits for a
/// quiet moment, and it runs once per burst, not once per write.
pub const QUIET: Duration = Duration::from_secs(1);

/// When a running node gives its free heap pages back: after the applied
/// index has stood still for [`QUIET`] since it last moved, once per
/// change of it. The caller passes the clock and the applied index.
#[derive(Debug)]
pub struct QuietTrim {
    /// The applied index last seen, and since when it stands.
    seen: u64,
    since: Instant,
    /// The applied index at the last trim.
    trimmed: u64,
}

impl QuietTrim {
    pub fn new(applied: u64, now: Instant) -> QuietTrim {
        QuietTrim {
            seen: applied,
            since: now,
            trimmed: applied,
        }
    }

    /// Whether to trim now (then it counts as done).
    pub fn due(&mut self, applied: u64, now: Instant) -> bool {
        if applied != self.seen {
            self.seen = applied;
            self.since = now;
            return false;
        }
        if applied == self.trimmed || now.saturating_duration_since(self.since) < QUIET {
            return false;
        }
        self.trimmed = applied;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_per_burst_after_a_quiet_second() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut trim = QuietTrim::new(5, t0);
        assert!(!trim.due(5, at(5_000)), "nothing applied since the start");
        assert!(!trim.due(9, at(5_100)), "applies are going on");
        assert!(!trim.due(9, at(5_900)), "not quiet long enough");
        assert!(trim.due(9, at(6_100)), "quiet for a second after a burst");
        assert!(!trim.due(9, at(9_000)), "once per burst");
        assert!(!trim.due(12, at(9_100)));
        assert!(trim.due(12, at(10_200)));
    }
}
