//! Watches against the real `qed` binary: create and cancel, filters,
//! prev_kv, history replay, the compacted response, duplicate IDs and
//! progress requests, through the SDK and on a raw watch stream.

mod common;

use common::TestNode;
use qed::client::{Client, EventType, WatchOptions, WatchResponse, Watcher};
use qed::wire::watch::{WatchCreateRequest, WatchRequest};
use qed::wire::Call;
use std::time::Duration;

/// The next response, or a panic after a generous deadline.
async fn next(w: &mut Watcher) -> WatchResponse {
    qed::runtime::timeout(Duration::from_secs(20), w.next())
        .await
        .expect("watch response within the deadline")
        .expect("watch still open")
        .expect("watch response")
}

/// Events until `n` have arrived (they may come in several responses).
async fn events(w: &mut Watcher, n: usize) -> Vec<qed::client::Event> {
    let mut out = Vec::new();
    while out.len() < n {
        let resp = next(w).await;
        assert!(!resp.canceled, "unexpected cancel: {resp:?}");
        out.extend(resp.events);
    }
    assert_eq!(out.len(), n, "more events than expected: {out:?}");
    out
}

fn kv(e: &qed::client::Event) -> (&[u8], &[u8], i64) {
    (&e.kv.key, &e.kv.value, e.kv.mod_revision)
}

#[test]
fn watch_semantics_match_etcd() {
    let node = TestNode::start(&[]);
    qed::runtime::block_on(async {
        let c = node.client().await;
        c.put("a", "1", None).await.unwrap(); // rev 2

        // From now: only later writes, stamped with this member's header.
        let mut w = c.watch("a", WatchOptions::new()).await.unwrap();
        c.put("a", "2", None).await.unwrap(); // rev 3
        c.put("b", "x", None).await.unwrap(); // rev 4, not watched
        c.put("a", "3", None).await.unwrap(); // rev 5
        let resp = next(&mut w).await;
        assert_ne!(resp.header.member_id, 0);
        assert_ne!(resp.header.cluster_id, 0);
        assert_eq!(resp.header.revision, 3);
        assert_eq!(kv(&resp.events[0]), (&b"a"[..], &b"2"[..], 3));
        let evs = events(&mut w, 1).await;
        assert_eq!(kv(&evs[0]), (&b"a"[..], &b"3"[..], 5));

        // History replay from an old revision, then live events.
        let mut h = c
            .watch("a", WatchOptions::new().with_start_revision(2))
            .await
            .unwrap();
        let evs = events(&mut h, 3).await;
        let revs: Vec<i64> = evs.iter().map(|e| e.kv.mod_revision).collect();
        assert_eq!(revs, vec![2, 3, 5]);
        c.delete("a", None).await.unwrap(); // rev 6
        let evs = events(&mut h, 1).await;
        assert_eq!(
            (evs[0].kind, evs[0].kv.mod_revision),
            (EventType::Delete, 6)
        );

        // Prefix, NOPUT filter and prev_kv.
        let mut p = c
            .watch(
                "p/",
                WatchOptions::new()
                    .with_prefix()
                    .with_filter_put()
                    .with_prev_kv(),
            )
            .await
            .unwrap();
        c.put("p/x", "old", None).await.unwrap(); // rev 7
        c.put("q", "outside", None).await.unwrap(); // rev 8
        c.delete("p/x", None).await.unwrap(); // rev 9
        let evs = events(&mut p, 1).await;
        assert_eq!(evs[0].kind, EventType::Delete);
        assert_eq!(evs[0].kv.mod_revision, 9);
        let prev = evs[0].prev_kv.as_ref().expect("prev_kv asked for");
        assert_eq!(prev.value, b"old");

        // Range and NODELETE.
        let mut r = c
            .watch(
                "k1",
                WatchOptions::new().with_range("k3").with_filter_delete(),
            )
            .await
            .unwrap();
        c.put("k0", "-", None).await.unwrap(); // rev 10
        c.put("k2", "in", None).await.unwrap(); // rev 11
        c.delete("k2", None).await.unwrap(); // rev 12
        c.put("k1", "in", None).await.unwrap(); // rev 13
        let evs = events(&mut r, 2).await;
        assert_eq!(kv(&evs[0]), (&b"k2"[..], &b"in"[..], 11));
        assert_eq!(kv(&evs[1]), (&b"k1"[..], &b"in"[..], 13));
        assert!(evs[0].prev_kv.is_none(), "prev_kv only when asked");

        // Cancel: nothing more after it.
        w.cancel().await.unwrap();
        assert!(w.next().await.is_none());

        // A progress request answers with the current revision.
        r.request_progress().await.unwrap();
        let progress = next(&mut r).await;
        assert!(progress.events.is_empty());
        assert_eq!(progress.watch_id, -1);
        assert_eq!(progress.header.revision, 13);

        // Compacted: the watch is canceled with the compaction revision.
        c.compact(12, true).await.unwrap();
        let mut old = c
            .watch("a", WatchOptions::new().with_start_revision(3))
            .await
            .unwrap();
        let resp = next(&mut old).await;
        assert!(resp.canceled);
        assert_eq!(resp.compact_revision, 12);
        assert!(old.next().await.is_none());
        // After it: served.
        let mut at = c
            .watch("k1", WatchOptions::new().with_start_revision(13))
            .await
            .unwrap();
        let evs = events(&mut at, 1).await;
        assert_eq!(evs[0].kv.mod_revision, 13);
        // At the compaction revision itself: served with what compaction
        // kept of it, so the delete of k2 at 12 is gone (its tombstone
        // was compacted away), as etcd 3.4 answers `watch --rev 12`.
        let mut at = c
            .watch(
                "k",
                WatchOptions::new().with_prefix().with_start_revision(12),
            )
            .await
            .unwrap();
        let evs = events(&mut at, 1).await;
        assert_eq!(kv(&evs[0]), (&b"k1"[..], &b"in"[..], 13));
    });
}

async fn read(recv: &mut qed::client::StreamReceiver) -> WatchResponse {
    qed::runtime::timeout(Duration::from_secs(20), recv.recv::<WatchResponse>())
        .await
        .expect("response within the deadline")
        .expect("readable stream")
        .expect("open stream")
}

/// The raw stream: several watches on one stream, client-chosen IDs, the
/// duplicate-ID refusal and an empty range.
#[test]
fn one_stream_multiplexes_watches() {
    let node = TestNode::start(&[]);
    qed::runtime::block_on(async {
        let c: Client = node.client().await;
        let (mut send, mut recv) = c.open_stream(None, Call::Watch).await.unwrap();
        let create = |key: &str, id: i64| {
            WatchRequest::Create(WatchCreateRequest {
                key: key.as_bytes().to_vec(),
                watch_id: id,
                ..Default::default()
            })
        };
        send.send(&create("x", 7)).await.unwrap();
        let r = read(&mut recv).await;
        assert!(r.created && !r.canceled && r.watch_id == 7);
        send.send(&create("y", 7)).await.unwrap();
        let r = read(&mut recv).await;
        assert!(r.created && r.canceled && r.watch_id == -1);
        assert!(r.cancel_reason.contains("duplicate watch ID"), "{r:?}");
        send.send(&create("y", 0)).await.unwrap();
        let r = read(&mut recv).await;
        assert!(
            r.created && r.watch_id == 0,
            "server-assigned IDs start at 0"
        );
        send.send(&WatchRequest::Create(WatchCreateRequest {
            key: b"z".to_vec(),
            range_end: b"a".to_vec(),
            ..Default::default()
        }))
        .await
        .unwrap();
        let r = read(&mut recv).await;
        assert!(r.canceled && r.cancel_reason.contains("range is empty"));

        c.put("y", "1", None).await.unwrap();
        c.put("x", "1", None).await.unwrap();
        let r = read(&mut recv).await;
        assert_eq!((r.watch_id, r.events[0].kv.key.as_slice()), (0, &b"y"[..]));
        let r = read(&mut recv).await;
        assert_eq!((r.watch_id, r.events[0].kv.key.as_slice()), (7, &b"x"[..]));

        send.send(&WatchRequest::Cancel { watch_id: 7 })
            .await
            .unwrap();
        let r = read(&mut recv).await;
        assert!(r.canceled && r.watch_id == 7);
        c.put("x", "2", None).await.unwrap();
        c.put("y", "2", None).await.unwrap();
        let r = read(&mut recv).await;
        assert_eq!(r.watch_id, 0, "the canceled watch gets nothing more");
    });
}

/// The SDK puts a client's watches on a few shared streams: one client
/// holds more watches than a connection has streams (4,096), and a watch
/// dropped by its user is canceled on the node.
#[test]
fn one_client_holds_more_watches_than_streams() {
    let node = TestNode::start(&[]);
    qed::runtime::block_on(async {
        let c = node.client().await;
        let n = 5000;
        let mut watchers = Vec::with_capacity(n);
        for i in 0..n {
            let w = c
                .watch(format!("many/{}", i % 10), WatchOptions::new())
                .await
                .expect("watch");
            watchers.push(w);
        }
        // Drop half: their routes go, the rest still get their events.
        watchers.truncate(n / 2);
        for k in 0..10 {
            c.put(format!("many/{k}"), "v", None).await.unwrap();
        }
        for (i, w) in watchers.iter_mut().enumerate() {
            let got = events(w, 1).await;
            assert_eq!(got[0].kv.key, format!("many/{}", i % 10).into_bytes());
        }
    });
}

/// A watch whose consumer stops reading does not hold up another watch on
/// the same shared stream; once it reads again it gets every revision in
/// order (detached and re-created from where it stopped).
#[test]
fn a_slow_watch_does_not_stall_its_stream() {
    let node = TestNode::start(&[]);
    qed::runtime::block_on(async {
        let c = node.client().await;
        let mut slow = c
            .watch("s/", WatchOptions::new().with_prefix())
            .await
            .unwrap();
        let mut fast = c
            .watch("s/", WatchOptions::new().with_prefix())
            .await
            .unwrap();
        let first = fast.next_revision();
        let puts = 2000;
        let writer = {
            let c = c.clone();
            qed::runtime::spawn(async move {
                for i in 0..puts {
                    c.put(format!("s/{}", i % 7), format!("{i}"), None)
                        .await
                        .unwrap();
                }
            })
        };
        // The fast consumer keeps up while the slow one reads nothing.
        let got = events(&mut fast, puts).await;
        writer.await;
        let revs: Vec<i64> = got.iter().map(|e| e.kv.mod_revision).collect();
        assert_eq!(revs, (first..first + puts as i64).collect::<Vec<_>>());
        let got = events(&mut slow, puts).await;
        let revs: Vec<i64> = got.iter().map(|e| e.kv.mod_revision).collect();
        assert_eq!(revs, (first..first + puts as i64).collect::<Vec<_>>());
    });
}

/// `Watcher::next` under a timeout that keeps firing (as in a `select`)
/// loses and repeats nothing.
#[test]
fn next_is_cancel_safe() {
    let node = TestNode::start(&[]);
    qed::runtime::block_on(async {
        let c = node.client().await;
        let mut w = c
            .watch("cs/", WatchOptions::new().with_prefix())
            .await
            .unwrap();
        let first = w.next_revision();
        let puts = 300;
        let writer = {
            let c = c.clone();
            qed::runtime::spawn(async move {
                for i in 0..puts {
                    c.put(format!("cs/{}", i % 5), "v", None).await.unwrap();
                }
            })
        };
        let mut revs = Vec::new();
        let (mut timeouts, deadline) = (0u64, std::time::Instant::now() + Duration::from_secs(60));
        while revs.len() < puts {
            assert!(
                std::time::Instant::now() < deadline,
                "got {} of {puts}",
                revs.len()
            );
            match qed::runtime::timeout(Duration::from_micros(200), w.next()).await {
                Ok(Some(Ok(resp))) => revs.extend(resp.events.iter().map(|e| e.kv.mod_revision)),
                Ok(other) => panic!("watch ended: {other:?}"),
                Err(_) => timeouts += 1,
            }
        }
        writer.await;
        assert!(timeouts > 0, "the timeout never interrupted a wait");
        assert_eq!(revs, (first..first + puts as i64).collect::<Vec<_>>());
    });
}
