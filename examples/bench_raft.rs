//! Raft core micro-benchmark: a 3-node cluster in one thread with no I/O
//! (messages delivered in memory, "fsync" instant), reporting committed
//! entries per second and heap allocations per committed entry, counted by
//! a wrapping global allocator.
//!
//! `make bench-raft` (or `cargo run --release --example bench_raft`).
//! Optional args: total entries (default 200000), batch size (default: 64,
//! then 1 with a quarter of the entries), payload bytes (default 128).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use qed::raft::{Config, Node, RestartState, Role, Snapshot};
use qed::wire::raft::{ConfState, Message, SnapshotMeta};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let total = args.first().copied().unwrap_or(200_000);
    let payload = args.get(2).copied().unwrap_or(128) as usize;
    match args.get(1) {
        Some(&batch) => run(total, batch, payload),
        None => {
            run(total, 64, payload);
            run(total / 4, 1, payload);
        }
    }
}

/// One cluster, `total` proposals in rounds of `batch` (each round is
/// pumped to quiescence: replicated, persisted, committed, applied).
fn run(total: u64, batch: u64, payload: usize) {
    let conf = ConfState {
        voters: vec![1, 2, 3],
        learners: vec![],
    };
    let mut nodes: Vec<Node> = (1..=3)
        .map(|id| {
            let state = RestartState {
                snapshot: Snapshot {
                    meta: SnapshotMeta {
                        conf_state: conf.clone(),
                        ..Default::default()
                    },
                    data: Vec::new().into(),
                },
                ..Default::default()
            };
            Node::new(Config::new(id), state).expect("config")
        })
        .collect();
    let mut net: VecDeque<Message> = VecDeque::new();
    let mut applied = [0u64; 3];

    // Drain every node's Ready: persist instantly, deliver in memory.
    let pump = |nodes: &mut Vec<Node>, net: &mut VecDeque<Message>, applied: &mut [u64; 3]| loop {
        let mut idle = true;
        for (i, n) in nodes.iter_mut().enumerate() {
            while n.has_ready() {
                idle = false;
                let rd = n.ready();
                net.extend(rd.messages.into_iter().map(|o| o.message));
                if let Some(t) = rd.persist {
                    n.on_persisted(t);
                }
                applied[i] += rd.committed_entries.len() as u64;
                if applied[i] % 50_000 < rd.committed_entries.len() as u64 {
                    let _ = n.compact(Vec::new());
                }
            }
        }
        while let Some(m) = net.pop_front() {
            idle = false;
            let to = (m.to - 1) as usize;
            if let Some(n) = nodes.get_mut(to) {
                n.step(m);
            }
        }
        if idle {
            break;
        }
    };

    while nodes[0].status().role != Role::Leader {
        nodes[0].tick();
        for n in nodes.iter_mut().skip(1) {
            n.tick();
        }
        pump(&mut nodes, &mut net, &mut applied);
        if nodes.iter().any(|n| n.status().role == Role::Leader) {
            break;
        }
    }
    let leader = nodes
        .iter()
        .position(|n| n.status().role == Role::Leader)
        .expect("a leader");
    let start_commit = nodes[leader].status().commit;
    let data = vec![7u8; payload];

    let allocs0 = ALLOCS.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let mut proposed = 0;
    while proposed < total {
        for _ in 0..batch {
            nodes[leader].propose(data.clone()).expect("leader accepts");
        }
        proposed += batch;
        pump(&mut nodes, &mut net, &mut applied);
    }
    let elapsed = t0.elapsed();
    let allocs = ALLOCS.load(Ordering::Relaxed) - allocs0;
    let committed = nodes[leader].status().commit - start_commit;
    assert!(committed >= total, "only {committed} of {total} committed");
    println!(
        "bench-raft: 3 nodes, no I/O, batch {batch}, {payload} B entries: {committed} committed in {:.3} s = {:.0} entries/s, {:.1} allocations/entry (including the proposal's own payload copy)",
        elapsed.as_secs_f64(),
        committed as f64 / elapsed.as_secs_f64(),
        allocs as f64 / committed as f64
    );
}
