//! Damaged etcd snapshots cost memory in proportion to the file, never to
//! a length written inside it: every allocation `etcd_db::import` makes
//! while reading a damaged file is checked against a bound of a few times
//! the file's size (the largest legitimate ones are the per-entry maps and
//! vectors the import builds). A counting global allocator records the
//! largest single request; this file holds one test so nothing else
//! allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Largest = Largest;

fn sample() -> Vec<u8> {
    use qed::wire::kv::{DeleteRangeRequest, PutRequest};
    let mut store = qed::mvcc::Store::new();
    for i in 0..400 {
        let put = PutRequest {
            key: format!("key{:03}", i % 150).into_bytes(),
            value: vec![b'v'; i % 50],
            ..Default::default()
        };
        store.put(&put, &|_| true).unwrap();
    }
    let del = DeleteRangeRequest {
        key: b"key007".to_vec(),
        ..Default::default()
    };
    store.delete_range(&del).unwrap();
    store.compact(300).unwrap();
    qed::etcd_db::export(&store, &Default::default(), &Default::default(), 1).unwrap()
}

#[test]
fn damaged_files_allocate_in_proportion_to_their_size() {
    let good = sample();
    let bound = 8 * good.len() + (1 << 20);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut refused = 0;
    for round in 0..3000 {
        let mut bytes = good.clone();
        // Damage aimed at length fields half the time: a byte of 0xff
        // makes element sizes and counts huge.
        for _ in 0..1 + next() % 6 {
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] = if round % 2 == 0 { 0xff } else { next() as u8 };
        }
        // Re-checksum the metas so damage there reaches the tree too.
        if round % 3 == 0 {
            for meta in 0..2usize {
                let m = meta * 4096 + 16;
                let sum = fnv64a(&bytes[m..m + 56]);
                bytes[m + 56..m + 64].copy_from_slice(&sum.to_le_bytes());
            }
        }
        LARGEST.store(0, Ordering::Relaxed);
        let result = qed::etcd_db::import(&bytes);
        let largest = LARGEST.load(Ordering::Relaxed);
        assert!(
            largest <= bound,
            "round {round}: one allocation of {largest} bytes for a file of {}",
            bytes.len()
        );
        if let Err(e) = result {
            refused += 1;
            assert!(!e.to_string().is_empty());
        }
    }
    // The damage must actually be reaching the decoder.
    assert!(refused > 500, "only {refused} damaged files refused");
}

fn fnv64a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
