//! A restarted member leaves its values in the snapshot file it loads.
//!
//! A restart maps the newest snapshot and decodes the key space from it
//! with each value left in the file (`mvcc::Backing`), as etcd's bbolt
//! does: the heap holds the keys and indexes, and a value's pages are read
//! in only when something reads it. Checked here from the outside: after a
//! restart the member's anonymous (heap) memory is well below the values'
//! own size; every value reads back right; writes, new snapshots (written
//! from values still in the old, then pruned, file) and a second restart
//! keep every value.

mod common;

use common::TestNode;
use qed::client::{Client, GetOptions};

const KEYS: usize = 8000;
const VALUE: usize = 4096;

fn value(i: usize, round: u8) -> Vec<u8> {
    let mut v = format!("{i:06}-{round}-").into_bytes();
    v.resize(VALUE, b'a' + (i % 26) as u8);
    v
}

async fn put_all(client: &Client, keys: std::ops::Range<usize>, round: u8) {
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (client, keys) = (client.clone(), keys.clone());
            qed::runtime::spawn(async move {
                for i in keys.skip(t).step_by(8) {
                    client
                        .put(format!("k{i:06}"), value(i, round), None)
                        .await
                        .expect("put");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
}

/// Every key holds the value of the round it was last written in.
async fn check_all(client: &Client, round_of: impl Fn(usize) -> u8) {
    let all = client
        .get("k", Some(GetOptions::new().with_prefix()))
        .await
        .expect("read all");
    assert_eq!(all.kvs.len(), KEYS);
    for (i, kv) in all.kvs.iter().enumerate() {
        assert_eq!(kv.key, format!("k{i:06}").into_bytes());
        assert!(kv.value == value(i, round_of(i)), "key {i}: wrong value");
    }
}

/// The process's anonymous resident memory (its heap, not file pages).
fn rss_anon_bytes(node: &TestNode) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.child.id()))
        .expect("read /proc/PID/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon in /proc/PID/status");
    kib * 1024
}

#[test]
fn a_restart_leaves_values_in_the_snapshot_file() {
    // Snapshots every 500 entries: the newest holds all but the last few
    // hundred puts, which recovery replays from the WAL onto the heap.
    let mut node = TestNode::start(&["--snapshot-count", "500"]);
    let values = (KEYS * VALUE) as u64;
    qed::runtime::block_on(async {
        let client = node.client().await;
        put_all(&client, 0..KEYS, 0).await;
        check_all(&client, |_| 0).await;
    });
    node.restart();
    qed::runtime::block_on(async {
        let client = node.client().await;
        let anon = rss_anon_bytes(&node);
        println!("after restart: {anon} bytes anonymous, values {values} bytes");
        assert!(
            anon < values / 2,
            "a restarted member holds {anon} bytes of heap for {values} bytes of values"
        );
        check_all(&client, |_| 0).await;
        // Overwrite half: new snapshots are written from a state whose
        // other values are still in the loaded file, which is then pruned.
        put_all(&client, 0..KEYS / 2, 1).await;
        check_all(&client, |i| u8::from(i < KEYS / 2)).await;
    });
    node.restart();
    qed::runtime::block_on(async {
        let client = node.client().await;
        check_all(&client, |i| u8::from(i < KEYS / 2)).await;
    });
}
