//! `--auto-compaction-mode periodic --auto-compaction-retention 1s` on a
//! real node under a write loop: the leader keeps compacting, so an old
//! revision becomes `Compacted` and, later, so does a newer one (history
//! stays bounded instead of growing until NOSPACE). Polled with deadlines.

mod common;

use common::TestNode;
use qed::client::{Client, ClientError};
use qed::wire::kv::{PutRequest, RangeRequest};
use qed::wire::{Error, Request, Response};
use std::time::{Duration, Instant};

async fn put(client: &Client, i: u64) -> i64 {
    let put = Request::Put(PutRequest {
        key: format!("k{}", i % 10).into_bytes(),
        value: i.to_string().into_bytes(),
        ..Default::default()
    });
    match client.call(put).await {
        Ok(Response::Put(r)) => r.header.revision,
        other => panic!("put: {other:?}"),
    }
}

/// Whether a read at `rev` answers etcd's "compacted".
async fn compacted(client: &Client, rev: i64) -> bool {
    let get = Request::Range(RangeRequest {
        key: b"k1".to_vec(),
        revision: rev,
        ..Default::default()
    });
    match client.call(get).await {
        Err(ClientError::Server(Error::Compacted)) => true,
        Ok(_) => false,
        Err(e) => panic!("get --rev {rev}: {e:?}"),
    }
}

/// Writes until `rev` is compacted; fails at the deadline.
async fn write_until_compacted(client: &Client, rev: i64, next: &mut u64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut latest = 0;
    while Instant::now() < deadline {
        for _ in 0..20 {
            latest = put(client, *next).await;
            *next += 1;
        }
        if compacted(client, rev).await {
            return latest;
        }
        qed::runtime::sleep(Duration::from_millis(50)).await;
    }
    panic!("revision {rev} was never auto-compacted (latest revision {latest})");
}

#[test]
fn periodic_auto_compaction_keeps_history_bounded() {
    let node = TestNode::start(&[
        "--auto-compaction-mode",
        "periodic",
        "--auto-compaction-retention",
        "1s",
    ]);
    qed::runtime::block_on(async {
        let client = node.client().await;
        let mut next = 0;
        let first = put(&client, next).await;
        next += 1;
        assert!(!compacted(&client, first).await);
        let later = write_until_compacted(&client, first, &mut next).await;
        // It goes on: a revision written after the first compaction is
        // compacted in its turn, while the newest stays readable.
        write_until_compacted(&client, later, &mut next).await;
        let newest = put(&client, next).await;
        assert!(!compacted(&client, newest).await);
    });
}

#[test]
fn bad_retention_is_refused_at_start() {
    for (mode, retention) in [("periodic", "1x"), ("revision", "10m"), ("weekly", "1")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_qed"))
            .args(["--auto-compaction-mode", mode])
            .args(["--auto-compaction-retention", retention])
            // Should the flags ever pass, the node still stops at once.
            .args(["--listen-client-urls", "bogus://nowhere"])
            .output()
            .expect("run qed");
        assert_eq!(out.status.code(), Some(2), "{mode} {retention}: {out:?}");
    }
}
