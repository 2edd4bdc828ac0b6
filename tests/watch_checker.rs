//! The watch checker: concurrent writers and many watchers (prefix, range,
//! single key, from-key, from old revisions, a slow consumer), with a
//! compaction and a node restart (SIGKILL) in the middle. Every watcher's
//! event stream must equal the key space's history for its range exactly:
//! no gap, no duplicate, revision order, the right values, versions and
//! prev_kv. The history is rebuilt independently with `get --rev` at every
//! revision (revisions up to the compaction are recorded before it).
//!
//! `QED_WATCH_CHECK_OPS` sets the ops per writer per phase (default 60).

mod common;

use common::TestNode;
use qed::client::{
    Client, DeleteOptions, Event, EventType, GetOptions, KeyValue, Txn, TxnOp, WatchOptions,
    Watcher,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type State = BTreeMap<Vec<u8>, KeyValue>;

fn key(n: u64) -> String {
    format!("w/{n:02}")
}

/// Retries a write across the restart; an ambiguous failure may or may not
/// have applied, which the history replay accounts for.
async fn retry<F, Fut, T>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, qed::client::ClientError>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                qed::runtime::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// One writer: random puts, deletes, range deletes and multi-key txns
/// (keys in ascending order, so a revision's events are in key order).
async fn writer(c: Client, seed: u64, ops: usize) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut rand = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for i in 0..ops {
        let value = format!("{seed}-{i}");
        match rand(10) {
            0..=4 => {
                let k = key(rand(20));
                retry("put", || c.put(k.clone(), value.clone(), None)).await
            }
            5 | 6 => {
                let k = key(rand(20));
                retry("delete", || c.delete(k.clone(), None)).await
            }
            7 => {
                let a = rand(18);
                let (k1, k2) = (key(a), key(a + 1 + rand(2)));
                let txn = || {
                    c.txn(Txn::new().and_then([
                        TxnOp::put(k1.clone(), value.clone(), None),
                        TxnOp::put(k2.clone(), value.clone(), None),
                    ]))
                };
                retry("txn", txn).await
            }
            8 => {
                let a = rand(16);
                let (from, to) = (key(a), key(a + 4));
                let opts = DeleteOptions::new().with_range(to.clone());
                retry("delete range", || {
                    c.delete(from.clone(), Some(opts.clone()))
                })
                .await
            }
            _ => {
                let k = format!("z/{}", rand(5));
                retry("put outside", || c.put(k.clone(), value.clone(), None)).await
            }
        }
    }
}

/// What a watcher watches.
#[derive(Clone)]
struct Spec {
    name: &'static str,
    key: &'static str,
    options: WatchOptions,
    /// Range `[from, to)`; `to` empty means single key, "\0" from-key.
    from: &'static [u8],
    to: &'static [u8],
    prev_kv: bool,
}

impl Spec {
    fn contains(&self, k: &[u8]) -> bool {
        match self.to {
            b"" => k == self.from,
            b"\0" => k >= self.from,
            to => k >= self.from && k < to,
        }
    }
}

fn specs() -> Vec<Spec> {
    vec![
        Spec {
            name: "prefix",
            key: "w/",
            options: WatchOptions::new().with_prefix(),
            from: b"w/",
            to: b"w0",
            prev_kv: false,
        },
        Spec {
            name: "range",
            key: "w/05",
            options: WatchOptions::new().with_range("w/12").with_prev_kv(),
            from: b"w/05",
            to: b"w/12",
            prev_kv: true,
        },
        Spec {
            name: "single",
            key: "w/07",
            options: WatchOptions::new(),
            from: b"w/07",
            to: b"",
            prev_kv: false,
        },
        Spec {
            name: "from-key",
            key: "w/15",
            options: WatchOptions::new().with_from_key(),
            from: b"w/15",
            to: b"\0",
            prev_kv: false,
        },
    ]
}

/// A watcher's consumer: collects events until it sees one past `stop_at`
/// (set just before the sentinel writes). `slow` sleeps between reads.
async fn consume(mut w: Watcher, stop_at: Arc<AtomicI64>, slow: bool) -> Vec<Event> {
    let mut got = Vec::new();
    loop {
        let resp = match w.next().await {
            Some(Ok(resp)) => resp,
            // Resuming failed for a while (the node was down); try again.
            Some(Err(_)) => continue,
            None => panic!("watch ended unexpectedly"),
        };
        assert!(!resp.canceled, "watch canceled: {resp:?}");
        let done = resp.events.last().is_some_and(|e| {
            let stop = stop_at.load(Ordering::SeqCst);
            stop > 0 && e.kv.mod_revision > stop
        });
        got.extend(resp.events);
        if done {
            return got;
        }
        if slow {
            qed::runtime::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The key space (under `w/` and beyond) at revision `rev`.
async fn state_at(c: &Client, rev: i64) -> State {
    let opts = GetOptions::new().with_from_key().with_revision(rev);
    let resp = c.get("w/", Some(opts)).await.expect("get --rev");
    resp.kvs
        .into_iter()
        .map(|kv| (kv.key.clone(), kv))
        .collect()
}

/// Every revision's events, rebuilt from the states before and after it.
fn events_between(before: &State, after: &State, rev: i64) -> Vec<Event> {
    let mut keys: Vec<&Vec<u8>> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for k in keys {
        match (before.get(k), after.get(k)) {
            (prev, Some(kv)) if kv.mod_revision == rev => out.push(Event {
                kind: EventType::Put,
                kv: kv.clone(),
                prev_kv: prev.cloned(),
            }),
            (Some(prev), None) => out.push(Event {
                kind: EventType::Delete,
                kv: KeyValue {
                    key: k.clone(),
                    mod_revision: rev,
                    ..KeyValue::default()
                },
                prev_kv: Some(prev.clone()),
            }),
            _ => {}
        }
    }
    out
}

fn expected(spec: &Spec, history: &BTreeMap<i64, Vec<Event>>, from: i64, to: i64) -> Vec<Event> {
    history
        .range(from..=to)
        .flat_map(|(_, evs)| evs.iter())
        .filter(|e| spec.contains(&e.kv.key))
        .map(|e| Event {
            kind: e.kind,
            kv: e.kv.clone(),
            prev_kv: if spec.prev_kv {
                e.prev_kv.clone()
            } else {
                None
            },
        })
        .collect()
}

#[test]
fn watchers_see_exact_history_across_compaction_and_restart() {
    let ops: usize = std::env::var("QED_WATCH_CHECK_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let mut node = TestNode::start(&["--snapshot-count", "50"]);
    qed::runtime::block_on(async {
        let c = node.client().await;
        let stop_at = Arc::new(AtomicI64::new(0));
        // (spec, start revision, consumer)
        let mut watchers = Vec::new();
        for (i, spec) in specs().into_iter().enumerate() {
            let w = c.watch(spec.key, spec.options.clone()).await.unwrap();
            let start = w.next_revision();
            let task = qed::runtime::spawn(consume(w, stop_at.clone(), i == 1));
            watchers.push((spec, start, task));
        }

        // Phase 1: writers, and watchers from old revisions joining midway.
        let writers: Vec<_> = (1..=3)
            .map(|s| qed::runtime::spawn(writer(c.clone(), s, ops)))
            .collect();
        for spec in specs() {
            let opts = spec.options.clone().with_start_revision(2);
            let w = c.watch(spec.key, opts).await.unwrap();
            let task = qed::runtime::spawn(consume(w, stop_at.clone(), false));
            watchers.push((spec, 2, task));
        }
        for w in writers {
            w.await;
        }

        // Record history up to here, then compact it away.
        let r1 = c.get("w/", None).await.unwrap().header.revision;
        let history: Arc<Mutex<BTreeMap<i64, Vec<Event>>>> = Arc::default();
        let mut prev = state_at(&c, 1).await;
        for rev in 2..=r1 {
            let now = state_at(&c, rev).await;
            history
                .lock()
                .unwrap()
                .insert(rev, events_between(&prev, &now, rev));
            prev = now;
        }
        c.compact(r1, true).await.unwrap();
        let mut compacted = c
            .watch(
                "w/",
                WatchOptions::new().with_prefix().with_start_revision(2),
            )
            .await
            .unwrap();
        let resp = compacted.next().await.unwrap().unwrap();
        assert!(resp.canceled && resp.compact_revision == r1, "{resp:?}");

        // Phase 2: writers again, the node SIGKILLed and restarted under
        // them, then watchers replaying from just after the compaction.
        let writers: Vec<_> = (4..=6)
            .map(|s| qed::runtime::spawn(writer(c.clone(), s, ops)))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.get("w/", None).await.unwrap().header.revision < r1 + (ops as i64) / 2 {
            assert!(Instant::now() < deadline, "writers made no progress");
            qed::runtime::sleep(Duration::from_millis(10)).await;
        }
        node.restart();
        for spec in specs() {
            let opts = spec.options.clone().with_start_revision(r1 + 1);
            let deadline = Instant::now() + Duration::from_secs(30);
            let w = loop {
                match c.watch(spec.key, opts.clone()).await {
                    Ok(w) => break w,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        qed::runtime::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("watch after restart: {e}"),
                }
            };
            let task = qed::runtime::spawn(consume(w, stop_at.clone(), false));
            watchers.push((spec, r1 + 1, task));
        }
        for w in writers {
            w.await;
        }

        // The end: record the rest of history, then sentinel writes that
        // every watcher's range sees, to tell consumers to stop.
        let f = c.get("w/", None).await.unwrap().header.revision;
        for rev in r1 + 1..=f {
            let now = state_at(&c, rev).await;
            history
                .lock()
                .unwrap()
                .insert(rev, events_between(&prev, &now, rev));
            prev = now;
        }
        stop_at.store(f, Ordering::SeqCst);
        c.put("w/07", "sentinel", None).await.unwrap();
        c.put("w/15", "sentinel", None).await.unwrap();

        let history = history.lock().unwrap().clone();
        let total: usize = history.values().map(Vec::len).sum();
        assert!(total > ops, "too little history to check: {total} events");
        for (spec, start, task) in watchers {
            let got: Vec<Event> = qed::runtime::timeout(Duration::from_secs(60), task)
                .await
                .unwrap_or_else(|_| panic!("watcher {} did not finish", spec.name))
                .into_iter()
                .filter(|e| e.kv.mod_revision <= f)
                .collect();
            let want = expected(&spec, &history, start, f);
            assert_eq!(
                got.len(),
                want.len(),
                "watcher {} from {start}: event count",
                spec.name
            );
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "watcher {} from {start}: event {i}", spec.name);
            }
        }
    });
}

/// A consumer that stops reading while more is written than QUIC's flow
/// control and the hub's queue hold: its watcher is demoted and caught up
/// from history later, and it still sees every revision exactly once.
#[test]
fn a_stalled_consumer_still_gets_everything_in_order() {
    let node = TestNode::start(&[]);
    qed::runtime::block_on(async {
        let c = node.client().await;
        let mut w = c
            .watch("slow/", WatchOptions::new().with_prefix())
            .await
            .unwrap();
        let first = w.next_revision();
        let value = vec![b'x'; 8 * 1024];
        let puts = 1500;
        let writers: Vec<_> = (0..8)
            .map(|t| {
                let c = c.clone();
                let value = value.clone();
                qed::runtime::spawn(async move {
                    for i in (t..puts).step_by(8) {
                        c.put(format!("slow/{}", i % 50), value.clone(), None)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in writers {
            t.await;
        }
        let last = c.get("slow/", None).await.unwrap().header.revision;
        // Only now start reading.
        let mut revs = Vec::new();
        while revs.last().is_none_or(|r| *r < last) {
            let resp = qed::runtime::timeout(Duration::from_secs(60), w.next())
                .await
                .expect("events within the deadline")
                .expect("watch open")
                .expect("watch response");
            assert!(!resp.canceled);
            revs.extend(resp.events.iter().map(|e| e.kv.mod_revision));
        }
        let want: Vec<i64> = (first..=last).collect();
        assert_eq!(revs, want);
    });
}
