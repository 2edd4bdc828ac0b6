//! Measures the store's real heap use per key with a counting allocator,
//! and checks that `Store::size_bytes` (what the quota is enforced against)
//! stays on the safe side of it: at or above the heap the store holds, and
//! not far above. Prints bytes/key for the record (`cargo test --test
//! mvcc_memory -- --nocapture`). On glibc the heap is counted as malloc's
//! chunks (usable size plus its 8-byte header), what the process really
//! spends; elsewhere as the sizes asked for.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use qed::mvcc::Store;
use qed::wire::kv::{PutRequest, RangeRequest};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

/// Bytes malloc spends on the block at `ptr` of `layout`.
fn chunk(ptr: *mut u8, layout: Layout) -> isize {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if !ptr.is_null() {
        // SAFETY: `ptr` is a live allocation of the system allocator.
        return unsafe { libc::malloc_usable_size(ptr.cast()) } as isize + 8;
    }
    let _ = ptr;
    layout.size() as isize
}

// SAFETY: forwards every call to the system allocator unchanged; only
// counts sizes on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        LIVE.fetch_add(chunk(ptr, layout), Ordering::Relaxed);
        ptr
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(chunk(ptr, layout), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_sub(chunk(ptr, layout), Ordering::Relaxed);
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        let new_layout = Layout::from_size_align(new_size, layout.align()).unwrap_or(layout);
        LIVE.fetch_add(chunk(new, new_layout), Ordering::Relaxed);
        new
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const KEYS: usize = 50_000;
const VALUE: usize = 64;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

#[test]
fn bytes_per_key_and_estimate() {
    let no_lease = |_: i64| false;
    let key_len = format!("/registry/pods/{:08}", 0).len();
    let base = live();
    let mut store = Store::new();
    let mut req = PutRequest::default();
    for i in 0..KEYS {
        req.key = format!("/registry/pods/{i:08}").into_bytes();
        req.value = vec![b'v'; VALUE];
        store.put(&req, &no_lease).expect("put");
    }
    let heap = (live() - base) as f64;
    let per_key = heap / KEYS as f64;
    let estimate = store.size_bytes() as f64;
    let payload = (key_len + VALUE) as f64;
    println!(
        "one revision per key, uncompacted: {per_key:.0} B/key heap ({:.0} over key+value), estimate {:.0} B/key",
        per_key - payload,
        estimate / KEYS as f64
    );
    assert!(estimate >= heap, "{estimate} vs {heap}");

    // Compaction drops the replay log's entries below the compaction point.
    store.compact(store.revision()).expect("compact");
    let heap = (live() - base) as f64;
    let per_key = heap / KEYS as f64;
    let estimate = store.size_bytes() as f64;
    println!(
        "one revision per key, compacted:   {per_key:.0} B/key heap ({:.0} over key+value), estimate {:.0} B/key",
        per_key - payload,
        estimate / KEYS as f64
    );
    assert!(
        estimate >= heap && estimate < heap * 2.0,
        "{estimate} vs {heap}"
    );

    // A second revision of every key, then compaction back to one.
    for i in 0..KEYS {
        req.key = format!("/registry/pods/{i:08}").into_bytes();
        req.value = vec![b'w'; VALUE];
        store.put(&req, &no_lease).expect("put");
    }
    let heap2 = (live() - base) as f64;
    println!(
        "two revisions per key, uncompacted: {:.0} B/key heap, estimate {:.0} B/key",
        heap2 / KEYS as f64,
        store.size_bytes() as f64 / KEYS as f64
    );
    let estimate2 = store.size_bytes() as f64;
    assert!(
        estimate2 >= heap2 && estimate2 < heap2 * 2.0,
        "{estimate2} vs {heap2}"
    );

    // Rebuilt from its snapshot, the store costs what it cost when built
    // by writes (a restart must not hold more than the running node).
    let image = store.to_bytes().expect("image");
    let before_rebuild = live();
    let rebuilt = Store::from_bytes(&image).expect("rebuild");
    let rebuilt_heap = (live() - before_rebuild) as f64;
    println!(
        "rebuilt from its snapshot: {:.0} B/key heap (built by writes: {:.0})",
        rebuilt_heap / KEYS as f64,
        heap2 / KEYS as f64
    );
    assert!(rebuilt.size_bytes() as f64 >= rebuilt_heap);
    drop(rebuilt);

    // A clone shares everything: O(1) in time and memory.
    let before_clone = live();
    let view = store.clone();
    assert!(live() - before_clone < 1024);
    let all = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        count_only: true,
        ..Default::default()
    };
    assert_eq!(view.range(&all).expect("range").count, KEYS as i64);
}
