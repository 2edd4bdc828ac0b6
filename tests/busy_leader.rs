//! A leader that catches up thousands of watchers and compacts while it
//! takes writes keeps its leadership.
//!
//! - `watch_catch_up_and_compaction_keep_the_leader`: a 3-member cluster
//!   holds `busy_revisions()` revisions over 2000 keys; 2000 watchers (one
//!   per key) are created at once on the leader from revision 1, and while
//!   they catch up the history is compacted at its middle and a writer
//!   keeps writing. Every create succeeds, no member's term or leader
//!   changes, and no write takes [`WRITE_BOUND`] or more. Before catch-up
//!   rounds were bounded, half the creates timed out and the leader lost
//!   its leadership (a write failed with `LeaderChanged`).

mod common;

use common::TestCluster;
use qed::client::WatchOptions;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Revisions written before the watchers start. The issue asks for 100k,
/// which passes in about a minute of a debug build
/// (`QED_BUSY_REVISIONS=100000`); the default is half that, to keep
/// `make test` short (before the fix, 50k already stalled the leader).
fn busy_revisions() -> usize {
    std::env::var("QED_BUSY_REVISIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000)
}
const WATCHERS: usize = 2000;
/// The slowest write allowed while the leader catches watchers up and
/// compacts: the 1 s election timeout a stalled loop would run out (writes
/// took 36-240 ms in a debug build on a busy machine).
const WRITE_BOUND: Duration = Duration::from_secs(1);

/// `(term, leader)` as each member reports it.
async fn terms(clients: &[qed::client::Client]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for c in clients {
        match c.call(qed::wire::Request::Status(Default::default())).await {
            Ok(qed::wire::Response::Status(s)) => out.push((s.raft_term, s.leader)),
            other => panic!("status: {other:?}"),
        }
    }
    out
}

#[test]
fn watch_catch_up_and_compaction_keep_the_leader() {
    let cluster = TestCluster::start(3, &[]);
    qed::runtime::block_on(async {
        let mut clients = Vec::new();
        for i in 0..3 {
            clients.push(cluster.client(i).await);
        }
        let some: Vec<Option<qed::client::Client>> = clients.iter().cloned().map(Some).collect();
        let leader = cluster
            .wait_for_leader(&some, Duration::from_secs(30))
            .await;
        let writer = clients[leader].clone();

        let revisions = busy_revisions();
        let next = Arc::new(AtomicU64::new(0));
        let mut fillers = Vec::new();
        for _ in 0..32 {
            let (c, next) = (writer.clone(), next.clone());
            fillers.push(qed::runtime::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if n >= revisions {
                        return;
                    }
                    let key = format!("w/{:04}", n % WATCHERS);
                    c.put(key, format!("{n}"), None).await.expect("fill put");
                }
            }));
        }
        for f in fillers {
            f.await;
        }
        let before = terms(&clients).await;
        eprintln!("filled {revisions} revisions; (term, leader) per member: {before:x?}");

        let done = Arc::new(AtomicBool::new(false));
        let events = Arc::new(AtomicU64::new(0));
        // The writer runs from before the watchers exist to the end.
        let compact_at = (revisions / 2) as i64;
        let timed_writer = {
            let (c, done) = (writer.clone(), done.clone());
            qed::runtime::spawn(async move {
                let (mut slowest, mut writes) = (Duration::ZERO, 0u64);
                while !done.load(Ordering::Relaxed) {
                    if writes == 10 {
                        c.compact(compact_at, true).await.expect("compact");
                    }
                    let t = Instant::now();
                    let put = c.put("busy/writer", format!("{writes}"), None).await;
                    slowest = slowest.max(t.elapsed());
                    put.expect("a write while the leader is busy");
                    writes += 1;
                    qed::runtime::sleep(Duration::from_millis(20)).await;
                }
                (writes, slowest)
            })
        };
        let started = Instant::now();
        let watch_client = cluster.client(leader).await;
        // Created all at once, so they are behind together.
        let mut creates = Vec::new();
        for i in 0..WATCHERS {
            let (c, done, events) = (watch_client.clone(), done.clone(), events.clone());
            creates.push(qed::runtime::spawn(async move {
                let options = WatchOptions::new().with_start_revision(1);
                let Ok(mut watcher) = c.watch(format!("w/{i:04}"), options).await else {
                    return false;
                };
                qed::runtime::spawn(async move {
                    while !done.load(Ordering::Relaxed) {
                        let next =
                            qed::runtime::timeout(Duration::from_millis(500), watcher.next());
                        match next.await {
                            Ok(Some(Ok(resp))) => {
                                events.fetch_add(resp.events.len() as u64, Ordering::Relaxed);
                                if resp.canceled {
                                    return;
                                }
                            }
                            Ok(_) => return,
                            Err(_) => {}
                        }
                    }
                });
                true
            }));
        }
        let mut refused = 0;
        for c in creates {
            refused += usize::from(!c.await);
        }
        eprintln!(
            "{} of {WATCHERS} watchers created in {:?}",
            WATCHERS - refused,
            started.elapsed()
        );
        // Load for a while after the creates: catch-up, the compaction
        // (the writer's tenth write) and writes overlap.
        while started.elapsed() < Duration::from_secs(10) {
            qed::runtime::sleep(Duration::from_millis(100)).await;
        }
        done.store(true, Ordering::Relaxed);
        let (writes, slowest) = timed_writer.await;
        let after = terms(&clients).await;
        eprintln!(
            "{writes} writes, slowest {slowest:?}; {} events delivered in {:?}; (term, leader) after: {after:x?}",
            events.load(Ordering::Relaxed),
            started.elapsed()
        );
        assert_eq!(refused, 0, "watch creates failed (timed out)");
        assert_eq!(after, before, "a member's term or leader changed");
        assert!(
            slowest < WRITE_BOUND,
            "a write took {slowest:?} (bound {WRITE_BOUND:?})"
        );
    });
}
