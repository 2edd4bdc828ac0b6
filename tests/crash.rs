//! Acknowledged writes survive SIGKILL.
//!
//! Concurrent writers put unique keys and record every write the node
//! acknowledged, with its revision. The node is killed (SIGKILL) while
//! writes are in flight, at a moment drawn from a seeded PRNG (after N
//! acknowledgements, N random), restarted on the same data directory, and
//! checked: every acknowledged write is there with its value and revision,
//! and the revision never went backwards. Snapshots are taken every few
//! dozen entries so recovery runs through snapshot + WAL replay + segment
//! release too, and half the values are long enough to stay in the mapped
//! snapshot file after a restart. `CRASH_KILLS` sets the number of kills
//! (default 30).

mod common;

use common::TestNode;
use qed::client::{Client, ConnectOptions, GetOptions};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WRITERS: usize = 4;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

async fn client_for(node: &TestNode) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let options = ConnectOptions {
            ca_file: Some(node.ca_file()),
            request_timeout: Duration::from_secs(2),
            dial_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        match Client::connect(std::slice::from_ref(&node.url), options).await {
            Ok(c) => return c,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "node did not come back within 60 s: {e}"
                );
                qed::runtime::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let kills: usize = std::env::var("CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    println!("crash test: {kills} kills, CRASH_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let mut node = TestNode::start(&["--snapshot-count", "40"]);
    // key -> (value, revision) of every acknowledged put.
    let acked: Arc<Mutex<BTreeMap<String, (String, i64)>>> = Arc::default();
    let mut max_revision = 0i64;

    qed::runtime::block_on(async {
        for cycle in 0..kills {
            let client = client_for(&node).await;
            let stop = Arc::new(AtomicBool::new(false));
            let count = Arc::new(AtomicUsize::new(0));
            let mut writers = Vec::new();
            for w in 0..WRITERS {
                let (client, stop, count, acked) =
                    (client.clone(), stop.clone(), count.clone(), acked.clone());
                writers.push(qed::runtime::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) && i < 10_000 {
                        let key = format!("c{cycle:03}-w{w}-{i:05}");
                        // Every other value long enough to stay in the
                        // snapshot file a restart maps (`mvcc::Backing`).
                        let value = match i % 2 {
                            0 => format!("v{i}"),
                            _ => format!("v{i}-{}", "x".repeat(40)),
                        };
                        if let Ok(put) = client.put(key.clone(), value.clone(), None).await {
                            acked
                                .lock()
                                .unwrap()
                                .insert(key, (value, put.header.revision));
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        i += 1;
                    }
                }));
            }
            // Kill once N more writes were acknowledged; others are in flight.
            let target = 5 + rng.below(120) as usize;
            let deadline = Instant::now() + Duration::from_secs(60);
            while count.load(Ordering::Relaxed) < target {
                assert!(
                    Instant::now() < deadline,
                    "cycle {cycle}: writes stalled before the kill"
                );
                qed::runtime::sleep(Duration::from_millis(1)).await;
            }
            node.kill();
            stop.store(true, Ordering::Relaxed);
            // Writes still in flight can never be acknowledged now.
            for w in writers {
                w.cancel().await;
            }
            node.restart();

            let client = client_for(&node).await;
            let all = client
                .get("c", Some(GetOptions::new().with_prefix()))
                .await
                .expect("read after restart");
            let present: BTreeMap<String, (String, i64)> = all
                .kvs
                .iter()
                .map(|kv| {
                    let key = String::from_utf8_lossy(&kv.key).into_owned();
                    (
                        key,
                        (
                            String::from_utf8_lossy(&kv.value).into_owned(),
                            kv.mod_revision,
                        ),
                    )
                })
                .collect();
            let acked_now = acked.lock().unwrap().clone();
            for (key, want) in &acked_now {
                assert_eq!(
                    present.get(key),
                    Some(want),
                    "cycle {cycle} (CRASH_SEED={seed}): acknowledged write {key} lost or changed"
                );
                max_revision = max_revision.max(want.1);
            }
            assert!(
                all.header.revision >= max_revision,
                "cycle {cycle}: revision went back from {max_revision} to {}",
                all.header.revision
            );
            max_revision = all.header.revision;
        }
    });
    let total = acked.lock().unwrap().len();
    println!("crash test: {kills} kills, {total} acknowledged writes, all present");
    assert!(total >= kills * 5);
}
