//! A member's heap holds its state once: a restarted member leaves its
//! values in the snapshot file it loads, and a member of a cluster sends
//! followers its snapshot from the saved file, not from a copy of its
//! state kept on the heap.
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

use common::{proc_status_bytes, TestCluster, TestNode};
use qed::client::{Client, GetOptions};
use std::time::{Duration, Instant};

const KEYS: usize = 8000;
const VALUE: usize = 4096;

fn value(i: usize, round: u8) -> Vec<u8> {
    let mut v = format!("{i:06}-{round}-").into_bytes();
    v.resize(VALUE, b'a' + (i % 26) as u8);
    v
}

/// Puts every key of `keys` with its value of `round`, 8 at a time; a put
/// that fails (a leader change under way) is retried for up to 30 s.
async fn put_all(client: &Client, keys: std::ops::Range<usize>, round: u8) {
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (client, keys) = (client.clone(), keys.clone());
            qed::runtime::spawn(async move {
                for i in keys.skip(t).step_by(8) {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    loop {
                        match client.put(format!("k{i:06}"), value(i, round), None).await {
                            Ok(_) => break,
                            Err(e) if Instant::now() > deadline => {
                                return Err(format!("k{i}: {e}"))
                            }
                            Err(_) => qed::runtime::sleep(Duration::from_millis(50)).await,
                        }
                    }
                }
                Ok(())
            })
        })
        .collect();
    for task in tasks {
        if let Err(e) = task.await {
            panic!("put failed for 30 s: {e}");
        }
    }
}

/// Every key holds the value of the round it was last written in (read
/// in pages: one response of every value would be 32 MiB).
async fn check_all(client: &Client, round_of: impl Fn(usize) -> u8) {
    const PAGE: usize = 500;
    for start in (0..KEYS).step_by(PAGE) {
        let end = (start + PAGE).min(KEYS);
        let page = client
            .get(
                format!("k{start:06}"),
                Some(GetOptions::new().with_range(format!("k{end:06}"))),
            )
            .await
            .expect("read a page");
        assert_eq!(page.kvs.len(), end - start);
        for (kv, i) in page.kvs.iter().zip(start..end) {
            assert_eq!(kv.key, format!("k{i:06}").into_bytes());
            assert!(kv.value == value(i, round_of(i)), "key {i}: wrong value");
        }
    }
}

/// A resident-memory field of `/proc/PID/status` (`RssAnon`: the heap;
/// `RssFile`: mapped file pages), in bytes.
fn rss_bytes(pid: u32, field: &str) -> u64 {
    proc_status_bytes(pid, field).expect("field in /proc/PID/status")
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
        let anon = rss_bytes(node.child.id(), "RssAnon");
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

/// The newest snapshot index in a data directory.
fn newest_snapshot(data_dir: &std::path::Path) -> u64 {
    std::fs::read_dir(data_dir.join("member/snap"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    let index = name.strip_suffix(".snap")?.split_once('-')?.1.to_string();
                    u64::from_str_radix(&index, 16).ok()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

#[test]
fn a_cluster_member_keeps_no_copy_of_its_state_to_send() {
    // Every member of a cluster keeps its newest snapshot's image to send
    // a follower that falls behind; that image is the saved file, mapped,
    // so the heap holds the state once. Then a member that missed the
    // writes catches up from it.
    // Few entries kept past a snapshot: a member that misses more needs one.
    let mut cluster = TestCluster::start(
        3,
        &[
            "--snapshot-count",
            "500",
            "--experimental-snapshot-catchup-entries",
            "100",
        ],
    );
    let values = (KEYS * VALUE) as u64;
    qed::runtime::block_on(async {
        let client = cluster.client_of_all().await;
        // File pages before: the binary's code, mostly.
        let pids: Vec<u32> = cluster
            .members
            .iter()
            .map(|m| m.child.as_ref().expect("running").id())
            .collect();
        let file_before: Vec<u64> = pids.iter().map(|p| rss_bytes(*p, "RssFile")).collect();
        put_all(&client, 0..KEYS, 0).await;
        // Then a snapshot on every member covering most of it (rewriting
        // one value: a snapshot waits for log bytes worth a share of the
        // state, see `snapshot_due`).
        let deadline = Instant::now() + Duration::from_secs(60);
        while cluster
            .members
            .iter()
            .any(|m| newest_snapshot(&m.data_dir) < (KEYS * 3 / 4) as u64)
        {
            let newest: Vec<u64> = cluster
                .members
                .iter()
                .map(|m| newest_snapshot(&m.data_dir))
                .collect();
            assert!(
                Instant::now() < deadline,
                "no snapshot after the writes: newest {newest:?}"
            );
            put_all(&client, 0..8, 0).await;
        }
        for ((m, pid), before) in cluster.members.iter().zip(&pids).zip(&file_before) {
            let anon = rss_bytes(*pid, "RssAnon");
            let file = rss_bytes(*pid, "RssFile").saturating_sub(*before);
            println!(
                "{}: {anon} bytes anonymous, {file} more of file pages, values {values} bytes",
                m.name
            );
            assert!(
                anon < values + values / 2,
                "{} holds {anon} bytes of heap for {values} bytes of values",
                m.name
            );
            // The image's pages, read in when the file was checked after
            // saving, are given back until a send reads them.
            assert!(
                file < values / 2,
                "{} holds {file} more bytes of file pages after its snapshot",
                m.name
            );
        }
    });
    // A member that misses writes past the others' snapshots catches up
    // from one (sent from the mapped file).
    cluster.kill(2);
    qed::runtime::block_on(async {
        let client = cluster.client(0).await;
        put_all(&client, 0..KEYS / 2, 1).await;
    });
    cluster.restart(2);
    qed::runtime::block_on(async {
        let client = cluster.client(2).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = client
                .get(format!("k{:06}", KEYS / 2 - 1), None)
                .await
                .ok()
                .and_then(|r| r.kvs.into_iter().next());
            if got.is_some_and(|kv| kv.value == value(KEYS / 2 - 1, 1)) {
                break;
            }
            assert!(Instant::now() < deadline, "member 2 never caught up");
            qed::runtime::sleep(Duration::from_millis(100)).await;
        }
        check_all(&client, |i| u8::from(i < KEYS / 2)).await;
    });
}
