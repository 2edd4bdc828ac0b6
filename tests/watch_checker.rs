//! The watch checker: concurrent writers and many watchers (prefix, range,
//! single key, from-key, a slow consumer), in rounds: each round the node
//! is SIGKILLed and restarted under the writers (from the second round on),
//! new watchers join from random old revisions, and the history is
//! compacted at a random revision. Every watcher's event stream must equal
//! the key space's history for its range exactly: no gap, no duplicate,
//! revision order, the right values, versions and prev_kv. The history is
//! rebuilt independently with `get --rev` at every revision (recorded
//! before each compaction removes it).
//!
//! Compactions stay at or below what every watcher has already been
//! handed, because a watcher still behind a compaction is canceled with a
//! compacted response (etcd's rule, checked here too) rather than caught up.
//! A watcher may start exactly at a compaction revision; it gets what the
//! compaction kept of that revision, as in etcd: no deletes there (their
//! tombstones are gone) and no `prev_kv` (older versions are gone).
//!
//! `QED_WATCH_CHECK_OPS` sets the ops per writer per round (default 60),
//! `QED_WATCH_CHECK_ROUNDS` the rounds (default 6, so 5 restarts),
//! `QED_WATCH_CHECK_SEED` the seed of the compaction and start revisions
//! (printed; default from the clock).

mod common;

use common::TestNode;
use qed::client::{
    Client, DeleteOptions, Event, EventType, GetOptions, KeyValue, Txn, TxnOp, WatchOptions,
    Watcher,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type State = BTreeMap<Vec<u8>, KeyValue>;

fn key(n: u64) -> String {
    format!("w/{n:02}")
}

/// Retries a call across a restart for up to 60 s; an ambiguous write may
/// or may not have applied, which the history replay accounts for. Panics
/// with `what` and the last error if it never succeeds.
async fn retry<F, Fut, T>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, qed::client::ClientError>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Ok(v) => return v,
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
                retry("put", || c.put(k.clone(), value.clone(), None)).await;
            }
            5 | 6 => {
                let k = key(rand(20));
                retry("delete", || c.delete(k.clone(), None)).await;
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
                retry("txn", txn).await;
            }
            8 => {
                let a = rand(16);
                let (from, to) = (key(a), key(a + 4));
                let opts = DeleteOptions::new().with_range(to.clone());
                retry("delete range", || {
                    c.delete(from.clone(), Some(opts.clone()))
                })
                .await;
            }
            _ => {
                let k = format!("z/{}", rand(5));
                retry("put outside", || c.put(k.clone(), value.clone(), None)).await;
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
/// (set just before the sentinel writes) and publishes in `handed` the
/// last revision it has been handed. `slow` sleeps between reads.
async fn consume(
    mut w: Watcher,
    stop_at: Arc<AtomicI64>,
    handed: Arc<AtomicI64>,
    slow: bool,
) -> Vec<Event> {
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
        handed.store(w.next_revision() - 1, Ordering::SeqCst);
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
    let resp = retry("get --rev", || c.get("w/", Some(opts.clone()))).await;
    resp.kvs
        .into_iter()
        .map(|kv| (kv.key.clone(), kv))
        .collect()
}

async fn current_revision(c: &Client) -> i64 {
    retry("get", || c.get("w/", None)).await.header.revision
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

/// What a watcher of `spec` from `from` sees through `to`; `from_compacted`
/// when `from` was the compaction revision as the watch was created.
fn expected(
    spec: &Spec,
    history: &BTreeMap<i64, Vec<Event>>,
    from: i64,
    to: i64,
    from_compacted: bool,
) -> Vec<Event> {
    let compacted_away = |e: &Event| from_compacted && e.kv.mod_revision == from;
    history
        .range(from..=to)
        .flat_map(|(_, evs)| evs.iter())
        .filter(|e| spec.contains(&e.kv.key))
        .filter(|e| !(compacted_away(e) && e.kind == EventType::Delete))
        .map(|e| Event {
            kind: e.kind,
            kv: e.kv.clone(),
            prev_kv: if spec.prev_kv && !compacted_away(e) {
                e.prev_kv.clone()
            } else {
                None
            },
        })
        .collect()
}

/// Where two event streams first differ: the revision and both sides'
/// events there, so a count mismatch says what was lost or added.
fn first_divergence(got: &[Event], want: &[Event]) -> String {
    let at = got
        .iter()
        .zip(want)
        .position(|(g, w)| g != w)
        .unwrap_or(got.len().min(want.len()));
    let rev = match (got.get(at), want.get(at)) {
        (Some(g), Some(w)) => g.kv.mod_revision.min(w.kv.mod_revision),
        (Some(e), None) | (None, Some(e)) => e.kv.mod_revision,
        (None, None) => return "no divergence".into(),
    };
    let show = |evs: &[Event]| -> Vec<String> {
        evs.iter()
            .filter(|e| (rev - 1..=rev + 1).contains(&e.kv.mod_revision))
            .map(|e| {
                let key = String::from_utf8_lossy(&e.kv.key);
                format!("{:?} {key}@{}", e.kind, e.kv.mod_revision)
            })
            .collect()
    };
    format!(
        "first difference at event {at}, revision {rev}: got {:?}, want {:?}",
        show(got),
        show(want)
    )
}

/// The history as rebuilt so far: every revision's events up to `to`.
struct History {
    events: BTreeMap<i64, Vec<Event>>,
    state: State,
    to: i64,
}

impl History {
    async fn new(c: &Client) -> History {
        History {
            events: BTreeMap::new(),
            state: state_at(c, 1).await,
            to: 1,
        }
    }

    async fn record_through(&mut self, c: &Client, rev: i64) {
        for r in self.to + 1..=rev {
            let now = state_at(c, r).await;
            self.events.insert(r, events_between(&self.state, &now, r));
            self.state = now;
        }
        self.to = self.to.max(rev);
    }
}

/// A watcher under check: what it watches, where it started, the last
/// revision it has been handed, and its consumer.
struct Checked {
    spec: Spec,
    start: i64,
    /// `start` was the compaction revision when the watch was created.
    from_compacted: bool,
    handed: Arc<AtomicI64>,
    task: qed::runtime::JoinHandle<Vec<Event>>,
}

/// Creates a watch, retrying while the node restarts.
async fn watch_retrying(c: &Client, spec: &Spec, start: i64) -> Watcher {
    let opts = spec.options.clone().with_start_revision(start);
    let what = format!("watch {} from {start}", spec.name);
    retry(&what, || c.watch(spec.key, opts.clone())).await
}

fn spawn_checked(
    w: Watcher,
    spec: Spec,
    start: i64,
    from_compacted: bool,
    stop_at: &Arc<AtomicI64>,
    slow: bool,
) -> Checked {
    let handed = Arc::new(AtomicI64::new(start - 1));
    let task = qed::runtime::spawn(consume(w, stop_at.clone(), handed.clone(), slow));
    Checked {
        spec,
        start,
        from_compacted,
        handed,
        task,
    }
}

#[test]
fn watchers_see_exact_history_across_compactions_and_restarts() {
    let env = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let ops = env("QED_WATCH_CHECK_OPS", 60) as usize;
    let rounds = env("QED_WATCH_CHECK_ROUNDS", 6);
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1);
    let seed = env("QED_WATCH_CHECK_SEED", clock);
    eprintln!("watch checker: QED_WATCH_CHECK_SEED={seed} ops={ops} rounds={rounds}");
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut rand = move |n: i64| -> i64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % (n.max(1) as u64)) as i64
    };

    let mut node = TestNode::start(&["--snapshot-count", "50"]);
    qed::runtime::block_on(async {
        let c = node.client().await;
        let stop_at = Arc::new(AtomicI64::new(0));
        let mut watchers = Vec::new();
        for (i, spec) in specs().into_iter().enumerate() {
            let w = c.watch(spec.key, spec.options.clone()).await.unwrap();
            let start = w.next_revision();
            watchers.push(spawn_checked(w, spec, start, false, &stop_at, i == 1));
        }
        let mut history = History::new(&c).await;
        // Revisions below this are gone.
        let mut compacted = 1;
        let mut compactions = 0;

        for round in 0..rounds {
            let writers: Vec<_> = (1..=3)
                .map(|s| {
                    qed::runtime::spawn(writer(
                        c.clone(),
                        seed.wrapping_mul(64) + round * 3 + s,
                        ops,
                    ))
                })
                .collect();
            if round > 0 {
                // SIGKILL the node in the middle of the writes.
                let from = current_revision(&c).await;
                let deadline = Instant::now() + Duration::from_secs(30);
                while current_revision(&c).await < from + (ops as i64) / 2 {
                    assert!(Instant::now() < deadline, "writers made no progress");
                    qed::runtime::sleep(Duration::from_millis(10)).await;
                }
                node.restart();
            }
            // Watchers joining from random old revisions (the compaction
            // revision itself is still there, as compaction left it).
            for spec in specs() {
                let now = current_revision(&c).await;
                let start = compacted + rand(now - compacted + 1);
                let from_compacted = compactions > 0 && start == compacted;
                let w = watch_retrying(&c, &spec, start).await;
                watchers.push(spawn_checked(
                    w,
                    spec,
                    start,
                    from_compacted,
                    &stop_at,
                    false,
                ));
            }
            for w in writers {
                w.await;
            }

            // Record the history, then compact at a random revision no
            // watcher still needs.
            let now = current_revision(&c).await;
            history.record_through(&c, now).await;
            let handed = watchers
                .iter()
                .map(|w| w.handed.load(Ordering::SeqCst))
                .min()
                .unwrap_or(0);
            if handed > compacted {
                let rev = compacted + 1 + rand(handed - compacted);
                retry(&format!("compact {rev}"), || c.compact(rev, true)).await;
                compacted = rev;
                compactions += 1;
                // A watch from before the compaction is told so, and canceled.
                let spec = &specs()[0];
                let mut late = watch_retrying(&c, spec, compacted - 1).await;
                let resp = late.next().await.unwrap().unwrap();
                assert!(
                    resp.canceled && resp.compact_revision == compacted,
                    "watch from {} after compacting at {compacted}: {resp:?}",
                    compacted - 1
                );
            }
        }
        assert!(compactions > 0, "no compaction happened (seed {seed})");

        // The end: record the rest of history, then sentinel writes that
        // every watcher's range sees, to tell consumers to stop.
        let f = current_revision(&c).await;
        history.record_through(&c, f).await;
        stop_at.store(f, Ordering::SeqCst);
        c.put("w/07", "sentinel", None).await.unwrap();
        c.put("w/15", "sentinel", None).await.unwrap();

        let total: usize = history.events.values().map(Vec::len).sum();
        assert!(total > ops, "too little history to check: {total} events");
        eprintln!(
            "watch checker: {} watchers, {total} events in {f} revisions, {compactions} compactions, {} restarts",
            watchers.len(),
            rounds.saturating_sub(1)
        );
        for Checked {
            spec,
            start,
            from_compacted,
            task,
            ..
        } in watchers
        {
            let got: Vec<Event> = qed::runtime::timeout(Duration::from_secs(60), task)
                .await
                .unwrap_or_else(|_| panic!("watcher {} from {start} did not finish", spec.name))
                .into_iter()
                .filter(|e| e.kv.mod_revision <= f)
                .collect();
            let want = expected(&spec, &history.events, start, f, from_compacted);
            assert_eq!(
                got.len(),
                want.len(),
                "watcher {} from {start}: event count (seed {seed}); {}",
                spec.name,
                first_divergence(&got, &want)
            );
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g, w,
                    "watcher {} from {start}: event {i} (seed {seed})",
                    spec.name
                );
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
