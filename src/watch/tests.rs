//! Unit tests for each watch rule, then a model-based checker: random
//! writes, watches, compactions and slow consumers against a `Store`, every
//! watcher's delivered stream compared with the store's full history.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::mvcc::Store;
use qed_wire::kv::{DeleteRangeRequest, Event, EventType, PutRequest, RequestOp, TxnRequest};
use qed_wire::watch::WatchFilter;

fn put(store: &mut Store, key: &[u8], value: &[u8]) -> (Vec<Event>, i64) {
    let req = PutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        ..PutRequest::default()
    };
    match store.put(&req, &|_| true) {
        Ok((_, evs)) => (evs, store.revision()),
        Err(e) => panic!("put: {e}"),
    }
}

fn delete(store: &mut Store, key: &[u8], range_end: &[u8]) -> (Vec<Event>, i64) {
    let req = DeleteRangeRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        prev_kv: false,
    };
    match store.delete_range(&req) {
        Ok((_, evs)) => (evs, store.revision()),
        Err(e) => panic!("delete: {e}"),
    }
}

/// Writes through the store and tells the hub, as the driver does.
fn apply(hub: &mut WatchHub, (evs, rev): (Vec<Event>, i64)) {
    if !evs.is_empty() {
        hub.on_apply(&evs, rev);
    }
}

fn watch(key: &[u8], range_end: &[u8], start: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        start_revision: start,
        ..WatchCreateRequest::default()
    }
}

fn keys_of(resp: &WatchResponse) -> Vec<(Vec<u8>, i64)> {
    resp.events
        .iter()
        .map(|e| (e.kv.key.clone(), e.kv.mod_revision))
        .collect()
}

fn setup() -> (Store, WatchHub) {
    let store = Store::new();
    let hub = WatchHub::new(WatchConfig::default(), store.revision());
    (store, hub)
}

#[test]
fn auto_ids_count_from_zero_and_skip_client_ids() {
    let (_, mut hub) = setup();
    let mut req = watch(b"a", b"", 0);
    req.watch_id = 1;
    assert_eq!(hub.create(7, &req), Ok(1));
    req.watch_id = 0;
    assert_eq!(hub.create(7, &req), Ok(0));
    assert_eq!(hub.create(7, &req), Ok(2));
    // Another stream has its own IDs.
    assert_eq!(hub.create(8, &req), Ok(0));
    let out = hub.take_responses(7);
    assert_eq!(out.len(), 3);
    assert!(out
        .iter()
        .all(|r| r.created && !r.canceled && r.header.revision == 1));
    assert_eq!(
        out.iter().map(|r| r.watch_id).collect::<Vec<_>>(),
        vec![1, 0, 2]
    );
}

#[test]
fn duplicate_id_and_empty_range_are_refused_as_etcd_does() {
    let (_, mut hub) = setup();
    let mut req = watch(b"a", b"", 0);
    req.watch_id = 5;
    assert_eq!(hub.create(1, &req), Ok(5));
    assert_eq!(hub.create(1, &req), Err(WatchError::IdExists));
    assert_eq!(
        hub.create(1, &watch(b"b", b"a", 0)),
        Err(WatchError::EmptyRange)
    );
    let out = hub.take_responses(1);
    assert_eq!(out.len(), 3);
    for refused in &out[1..] {
        assert!(refused.created && refused.canceled);
        assert_eq!(refused.watch_id, -1);
    }
    assert_eq!(
        out[1].cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    assert_eq!(out[2].cancel_reason, "mvcc: watcher range is empty");
    assert_eq!(
        qed_wire::Error::from(WatchError::IdExists),
        qed_wire::Error::WatchIdExists
    );
    assert_eq!(hub.watcher_count(), 1);
}

#[test]
fn events_route_to_single_prefix_and_from_key_watchers() {
    let (mut store, mut hub) = setup();
    let single = hub.create(1, &watch(b"foo", b"", 0)).unwrap_or(-9);
    let prefix = hub.create(1, &watch(b"fo", b"fp", 0)).unwrap_or(-9);
    let from = hub.create(1, &watch(b"g", &[0], 0)).unwrap_or(-9);
    hub.take_responses(1);
    apply(&mut hub, put(&mut store, b"foo", b"1"));
    apply(&mut hub, put(&mut store, b"fox", b"2"));
    apply(&mut hub, put(&mut store, b"zzz", b"3"));
    apply(&mut hub, put(&mut store, b"a", b"4"));
    let out = hub.take_responses(1);
    let by_id = |id| -> Vec<(Vec<u8>, i64)> {
        out.iter()
            .filter(|r| r.watch_id == id)
            .flat_map(keys_of)
            .collect()
    };
    assert_eq!(by_id(single), vec![(b"foo".to_vec(), 2)]);
    assert_eq!(
        by_id(prefix),
        vec![(b"foo".to_vec(), 2), (b"fox".to_vec(), 3)]
    );
    assert_eq!(by_id(from), vec![(b"zzz".to_vec(), 4)]);
    // Header revision of a live event response is its last event's.
    assert!(out
        .iter()
        .all(|r| Some(r.header.revision) == r.events.last().map(|e| e.kv.mod_revision)));
}

#[test]
fn filters_and_prev_kv() {
    let (mut store, mut hub) = setup();
    let mut no_put = watch(b"k", b"", 0);
    no_put.filters = vec![WatchFilter::NoPut];
    let mut no_del = watch(b"k", b"", 0);
    no_del.filters = vec![WatchFilter::NoDelete];
    no_del.prev_kv = true;
    let a = hub.create(1, &no_put).unwrap_or(-9);
    let b = hub.create(1, &no_del).unwrap_or(-9);
    hub.take_responses(1);
    apply(&mut hub, put(&mut store, b"k", b"1"));
    apply(&mut hub, put(&mut store, b"k", b"2"));
    apply(&mut hub, delete(&mut store, b"k", b""));
    let out = hub.take_responses(1);
    let of = |id| {
        out.iter()
            .filter(|r| r.watch_id == id)
            .flat_map(|r| r.events.iter())
            .collect::<Vec<_>>()
    };
    let deletes = of(a);
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].kind, EventType::Delete);
    // prev_kv not asked for: stripped even though the store supplied it.
    assert_eq!(deletes[0].prev_kv, None);
    let puts = of(b);
    assert_eq!(puts.len(), 2);
    assert!(puts.iter().all(|e| e.kind == EventType::Put));
    assert_eq!(puts[0].prev_kv, None);
    assert_eq!(
        puts[1].prev_kv.as_ref().map(|kv| kv.value.clone()),
        Some(b"1".to_vec())
    );
}

#[test]
fn a_future_start_revision_skips_earlier_events() {
    let (mut store, mut hub) = setup();
    let id = hub.create(1, &watch(b"k", b"", 4)).unwrap_or(-9);
    hub.take_responses(1);
    for v in [b"1", b"2", b"3", b"4"] {
        apply(&mut hub, put(&mut store, b"k", v));
    }
    // Both revisions, joined in one response (nothing was drained between).
    let out = hub.take_responses(1);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].watch_id, id);
    assert_eq!(out[0].header.revision, 5);
    assert_eq!(
        keys_of(&out[0]),
        vec![(b"k".to_vec(), 4), (b"k".to_vec(), 5)]
    );
}

#[test]
fn old_start_revision_catches_up_then_follows_in_order() {
    let (mut store, mut hub) = setup();
    for i in 0..10u8 {
        apply(&mut hub, put(&mut store, &[b'a' + i % 3], &[i]));
    }
    let id = hub.create(1, &watch(b"a", b"c", 3)).unwrap_or(-9);
    assert_eq!(hub.unsynced_count(), 1);
    // Live events do not reach it before it caught up.
    apply(&mut hub, put(&mut store, b"a", b"x"));
    hub.catch_up(&store, 2);
    hub.catch_up(&store, 2);
    apply(&mut hub, put(&mut store, b"b", b"y"));
    for _ in 0..10 {
        hub.catch_up(&store, 2);
    }
    assert_eq!(hub.unsynced_count(), 0);
    apply(&mut hub, put(&mut store, b"a", b"z"));
    let out = hub.take_responses(1);
    assert!(out[0].created);
    let revs: Vec<i64> = out[1..]
        .iter()
        .inspect(|r| assert_eq!(r.watch_id, id))
        .flat_map(|r| r.events.iter().map(|e| e.kv.mod_revision))
        .collect();
    // Puts to a and b from revision 3 on: every revision but those of c
    // (4, 7, 10), then 12 to 14.
    let want: Vec<i64> = (3..=14).filter(|r| *r > 11 || (r - 2) % 3 != 2).collect();
    assert_eq!(revs, want);
}

#[test]
fn a_compacted_start_gets_etcds_compacted_response_and_is_removed() {
    let (mut store, mut hub) = setup();
    for v in [b"1", b"2", b"3", b"4"] {
        apply(&mut hub, put(&mut store, b"k", v));
    }
    assert!(store.compact(4).is_ok());
    let old = hub.create(1, &watch(b"k", b"", 2)).unwrap_or(-9);
    // Exactly at the compaction point is still served (etcd's rule).
    let at = hub.create(1, &watch(b"k", b"", 4)).unwrap_or(-9);
    hub.take_responses(1);
    hub.catch_up(&store, 0);
    let out = hub.take_responses(1);
    let compacted: Vec<_> = out.iter().filter(|r| r.watch_id == old).collect();
    assert_eq!(compacted.len(), 1);
    let r = compacted[0];
    assert!(r.canceled && !r.created && r.events.is_empty());
    assert_eq!(r.compact_revision, 4);
    let served: Vec<_> = out.iter().filter(|r| r.watch_id == at).collect();
    assert_eq!(served.len(), 1);
    assert_eq!(
        keys_of(served[0]),
        vec![(b"k".to_vec(), 4), (b"k".to_vec(), 5)]
    );
    assert_eq!(hub.watcher_count(), 1);
    assert_eq!(hub.cancel(1, old), Err(WatchError::NotFound));
}

/// One txn putting `a\0`..`a\4` with 200-byte values: one revision of
/// about 1 KB of events.
fn five_large_puts_in_one_revision(store: &mut Store) -> Vec<Event> {
    let ops = (0..5u8)
        .map(|i| {
            RequestOp::Put(PutRequest {
                key: vec![b'a', i],
                value: vec![i; 200],
                ..PutRequest::default()
            })
        })
        .collect();
    let txn = TxnRequest {
        success: ops,
        ..TxnRequest::default()
    };
    let Ok((_, evs)) = store.txn(&txn, &|_| true) else {
        panic!("txn failed");
    };
    evs
}

#[test]
fn one_revision_is_one_response_without_fragment() {
    let (mut store, mut hub) = setup();
    let config = WatchConfig {
        max_response_bytes: 100,
        ..WatchConfig::default()
    };
    hub = WatchHub::new(config, hub.revision());
    let id = hub.create(1, &watch(b"a", &[0], 0)).unwrap_or(-9);
    hub.take_responses(1);
    let evs = five_large_puts_in_one_revision(&mut store);
    hub.on_apply(&evs, store.revision());
    let out = hub.take_responses(1);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].watch_id, id);
    assert_eq!(out[0].events.len(), 5);
    assert!(!out[0].fragment);
}

#[test]
fn fragment_splits_large_revisions_marking_all_but_the_last() {
    let (mut store, _) = setup();
    let config = WatchConfig {
        max_response_bytes: 600,
        ..WatchConfig::default()
    };
    let mut hub = WatchHub::new(config, store.revision());
    let mut req = watch(b"a", &[0], 0);
    req.fragment = true;
    let id = hub.create(1, &req).unwrap_or(-9);
    hub.take_responses(1);
    let evs = five_large_puts_in_one_revision(&mut store);
    hub.on_apply(&evs, store.revision());
    let out = hub.take_responses(1);
    assert!(out.len() > 1);
    let last = out.len() - 1;
    for (i, r) in out.iter().enumerate() {
        assert_eq!(r.watch_id, id);
        assert_eq!(r.fragment, i != last);
        assert!(!r.events.is_empty());
    }
    assert_eq!(out.iter().map(|r| r.events.len()).sum::<usize>(), 5);
}

#[test]
fn a_large_catch_up_is_cut_at_revision_boundaries() {
    let (mut store, _) = setup();
    let config = WatchConfig {
        max_response_bytes: 600,
        ..WatchConfig::default()
    };
    let mut hub = WatchHub::new(config, store.revision());
    for i in 0..6u8 {
        apply(&mut hub, put(&mut store, &[b'k', i], &[i; 200]));
    }
    hub.create(1, &watch(b"k", b"l", 2)).unwrap_or(-9);
    hub.catch_up(&store, 0);
    let out = hub.take_responses(1);
    let events: Vec<&WatchResponse> = out.iter().filter(|r| !r.events.is_empty()).collect();
    assert!(events.len() > 1);
    let mut last = 0;
    for r in &events {
        assert!(!r.fragment);
        let first = r.events[0].kv.mod_revision;
        assert!(first > last);
        last = r.events.last().map_or(0, |e| e.kv.mod_revision);
        assert!(r.header.revision >= last);
    }
    assert_eq!(last, 7);
    assert_eq!(events.last().map(|r| r.header.revision), Some(7));
}

#[test]
fn a_slow_stream_is_demoted_then_resumes_without_gap_or_duplicate() {
    let (mut store, _) = setup();
    // Undrained events of one watch join one response, so the byte bound
    // is what a lone slow watch reaches: created (64) + 64 + 4 x 50.
    let config = WatchConfig {
        max_pending_responses: 3,
        max_pending_bytes: 300,
        ..WatchConfig::default()
    };
    let mut hub = WatchHub::new(config, store.revision());
    let slow = hub.create(1, &watch(b"k", b"", 0)).unwrap_or(-9);
    let fast = hub.create(2, &watch(b"k", b"", 0)).unwrap_or(-9);
    let mut got_fast = Vec::new();
    for i in 0..10u8 {
        apply(&mut hub, put(&mut store, b"k", &[i]));
        got_fast.extend(hub.take_responses(2).iter().flat_map(keys_of));
    }
    assert_eq!(hub.unsynced_count(), 1);
    // Queue bounded: created plus at most two events.
    assert!(hub.pending_len(1) <= 3);
    let mut got_slow = Vec::new();
    while hub.unsynced_count() > 0 {
        got_slow.extend(hub.take_responses(1).iter().flat_map(keys_of));
        hub.catch_up(&store, 1);
    }
    apply(&mut hub, put(&mut store, b"k", b"last"));
    got_slow.extend(hub.take_responses(1).iter().flat_map(keys_of));
    got_fast.extend(hub.take_responses(2).iter().flat_map(keys_of));
    let want: Vec<(Vec<u8>, i64)> = (2..=12).map(|r| (b"k".to_vec(), r)).collect();
    assert_eq!(got_slow, want);
    assert_eq!(got_fast, want);
    let _ = (slow, fast);
}

#[test]
fn cancel_drops_queued_events_and_answers_canceled() {
    let (mut store, mut hub) = setup();
    let id = hub.create(1, &watch(b"k", b"", 0)).unwrap_or(-9);
    apply(&mut hub, put(&mut store, b"k", b"1"));
    assert_eq!(hub.cancel(1, id), Ok(()));
    let out = hub.take_responses(1);
    assert_eq!(out.len(), 2);
    assert!(out[0].created);
    assert!(out[1].canceled && out[1].watch_id == id && out[1].compact_revision == 0);
    apply(&mut hub, put(&mut store, b"k", b"2"));
    assert!(!hub.has_pending(1));
    assert_eq!(hub.cancel(1, id), Err(WatchError::NotFound));
}

/// Revisions a watch is handed before its stream drains join its last
/// queued response (one response per watch per drain, not per revision),
/// its header the newest revision; a drained response is never joined.
#[test]
fn undrained_revisions_of_a_watch_join_one_response() {
    let (mut store, mut hub) = setup();
    let a = hub.create(1, &watch(b"k", b"", 0)).unwrap_or(-9);
    let b = hub.create(1, &watch(b"k", b"l", 0)).unwrap_or(-9);
    hub.take_responses(1);
    for v in [b"1", b"2", b"3"] {
        apply(&mut hub, put(&mut store, b"k", v));
    }
    let out = hub.take_responses(1);
    assert_eq!(out.len(), 2);
    for (r, id) in out.iter().zip([a, b]) {
        assert_eq!(r.watch_id, id);
        assert_eq!(r.header.revision, 4);
        let revs: Vec<i64> = r.events.iter().map(|e| e.kv.mod_revision).collect();
        assert_eq!(revs, vec![2, 3, 4]);
    }
    apply(&mut hub, put(&mut store, b"k", b"4"));
    let out = hub.take_responses(1);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|r| keys_of(r) == vec![(b"k".to_vec(), 5)]));
}

/// A stream's watches that get the same events share one queued response
/// (one per drain, however many revisions), which still reads as one
/// response per watch; a watch with other options gets its own, and a
/// canceled watch leaves the shared one without touching the others'.
#[test]
fn watches_with_the_same_events_share_one_queued_response() {
    let (mut store, mut hub) = setup();
    let ids: Vec<WatchId> = (0..100)
        .map(|_| hub.create(1, &watch(b"k", b"", 0)).unwrap_or(-9))
        .collect();
    let mut with_prev = watch(b"k", b"", 0);
    with_prev.prev_kv = true;
    let odd = hub.create(1, &with_prev).unwrap_or(-9);
    hub.take_responses(1);
    for v in [b"1", b"2", b"3"] {
        apply(&mut hub, put(&mut store, b"k", v));
    }
    assert_eq!(hub.pending_len(1), 2);
    assert_eq!(hub.cancel(1, ids[50]), Ok(()));
    // The canceled response is one more; the shared one stays.
    assert_eq!(hub.pending_len(1), 3);
    let out = hub.take_responses(1);
    let got: Vec<(WatchId, Vec<i64>, bool)> = out
        .iter()
        .map(|r| {
            let revs = r.events.iter().map(|e| e.kv.mod_revision).collect();
            (r.watch_id, revs, r.canceled)
        })
        .collect();
    let mut want: Vec<(WatchId, Vec<i64>, bool)> = ids
        .iter()
        .filter(|&&id| id != ids[50])
        .map(|&id| (id, vec![2, 3, 4], false))
        .collect();
    want.push((odd, vec![2, 3, 4], false));
    want.push((ids[50], vec![], true));
    assert_eq!(got, want);
    // Revision 2 created the key: no previous value.
    assert!(out[99].events[1..].iter().all(|e| e.prev_kv.is_some()));
    assert!(out[0].events.iter().all(|e| e.prev_kv.is_none()));
    // Drained: the next revision is one new shared response again.
    apply(&mut hub, put(&mut store, b"k", b"4"));
    assert_eq!(hub.pending_len(1), 2);
    assert_eq!(hub.take_responses(1).len(), 100);
}

/// A watch that gets a revision the others of its shared response do not
/// gets a response of its own from then on; nobody's events reorder.
#[test]
fn a_watch_leaves_a_shared_response_when_its_events_differ() {
    let (mut store, mut hub) = setup();
    let a = hub.create(1, &watch(b"k", b"", 0)).unwrap_or(-9);
    let b = hub.create(1, &watch(b"k", b"l", 0)).unwrap_or(-9);
    hub.take_responses(1);
    apply(&mut hub, put(&mut store, b"k", b"1"));
    // Only `b` (a range) matches this one.
    apply(&mut hub, put(&mut store, b"k2", b"1"));
    apply(&mut hub, put(&mut store, b"k", b"2"));
    let out = hub.take_responses(1);
    let got: Vec<(WatchId, Vec<i64>)> = out
        .iter()
        .map(|r| {
            (
                r.watch_id,
                r.events.iter().map(|e| e.kv.mod_revision).collect(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![(a, vec![2]), (b, vec![2]), (b, vec![3, 4]), (a, vec![4])]
    );
}

/// Events never join a response queued before a created, canceled or
/// progress response of the same stream: what the stream says stays in
/// the order it happened.
#[test]
fn events_never_join_across_another_response() {
    let (mut store, mut hub) = setup();
    let a = hub.create(1, &watch(b"k", b"", 0)).unwrap_or(-9);
    hub.take_responses(1);
    apply(&mut hub, put(&mut store, b"k", b"1"));
    let c = hub.create(1, &watch(b"k", b"", 0)).unwrap_or(-9);
    apply(&mut hub, put(&mut store, b"k", b"2"));
    hub.request_progress(1);
    apply(&mut hub, put(&mut store, b"k", b"3"));
    let out = hub.take_responses(1);
    let shape: Vec<(i64, bool, Vec<i64>)> = out
        .iter()
        .map(|r| {
            let revs = r.events.iter().map(|e| e.kv.mod_revision).collect();
            (r.watch_id, r.created, revs)
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            (a, false, vec![2]),
            (c, true, vec![]),
            (a, false, vec![3]),
            (c, false, vec![3]),
            (-1, false, vec![]),
            (a, false, vec![4]),
            (c, false, vec![4]),
        ]
    );
}

/// A join that would take a response to `max_response_bytes` starts a new
/// response instead; a revision is never split by it.
#[test]
fn a_join_stays_under_the_response_limit() {
    let (mut store, _) = setup();
    // Overhead 64, an event 48 + 1 + 50: two fit under 300, three do not.
    let config = WatchConfig {
        max_response_bytes: 300,
        ..WatchConfig::default()
    };
    let mut hub = WatchHub::new(config, store.revision());
    hub.create(1, &watch(b"k", b"", 0)).unwrap_or(-9);
    hub.take_responses(1);
    for _ in 0..5 {
        apply(&mut hub, put(&mut store, b"k", &[b'v'; 50]));
    }
    let out = hub.take_responses(1);
    let revs: Vec<Vec<i64>> = out
        .iter()
        .map(|r| r.events.iter().map(|e| e.kv.mod_revision).collect())
        .collect();
    assert_eq!(revs, vec![vec![2, 3], vec![4, 5], vec![6]]);
    assert!(out.iter().all(|r| !r.fragment));
}

/// A stream at its response bound still takes events that join a queued
/// response (they add no response); the byte bound still holds.
#[test]
fn a_stream_full_of_responses_still_takes_joining_events() {
    let (mut store, _) = setup();
    let config = WatchConfig {
        max_pending_responses: 2,
        ..WatchConfig::default()
    };
    let mut hub = WatchHub::new(config, store.revision());
    hub.create(1, &watch(b"k", b"", 0)).unwrap_or(-9);
    for v in [b"1", b"2", b"3", b"4"] {
        apply(&mut hub, put(&mut store, b"k", v));
    }
    assert_eq!(hub.unsynced_count(), 0);
    assert_eq!(hub.pending_len(1), 2);
    // Nothing joins across the second watch's created response: the full
    // stream demotes both.
    hub.create(1, &watch(b"k", b"", 0)).unwrap_or(-9);
    apply(&mut hub, put(&mut store, b"k", b"5"));
    assert_eq!(hub.unsynced_count(), 2);
    assert_eq!(hub.pending_len(1), 3);
}

#[test]
fn progress_notify_only_when_quiet_and_synced() {
    let (mut store, _) = setup();
    let config = WatchConfig {
        progress_interval_ms: 100,
        ..WatchConfig::default()
    };
    let mut hub = WatchHub::new(config, store.revision());
    let mut req = watch(b"k", b"", 0);
    req.progress_notify = true;
    let id = hub.create(1, &req).unwrap_or(-9);
    hub.take_responses(1);
    hub.tick_progress(0);
    apply(&mut hub, put(&mut store, b"other", b"1"));
    hub.tick_progress(50);
    assert!(!hub.has_pending(1));
    hub.tick_progress(100);
    let out = hub.take_responses(1);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].watch_id, id);
    assert!(out[0].events.is_empty() && !out[0].canceled);
    assert_eq!(out[0].header.revision, 2);
    // Events in the interval suppress the next one.
    apply(&mut hub, put(&mut store, b"k", b"1"));
    hub.take_responses(1);
    hub.tick_progress(200);
    assert!(!hub.has_pending(1));
    hub.tick_progress(300);
    assert_eq!(hub.take_responses(1).len(), 1);
}

#[test]
fn a_progress_request_waits_for_catch_up() {
    let (mut store, mut hub) = setup();
    for v in [b"1", b"2", b"3"] {
        apply(&mut hub, put(&mut store, b"k", v));
    }
    hub.create(1, &watch(b"k", b"", 2)).unwrap_or(-9);
    hub.take_responses(1);
    hub.request_progress(1);
    assert!(!hub.has_pending(1));
    hub.catch_up(&store, 0);
    let out = hub.take_responses(1);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].events.len(), 3);
    assert_eq!(out[1].watch_id, -1);
    assert_eq!(out[1].header.revision, 4);
    // With every watch synced it is answered at once.
    hub.request_progress(1);
    assert_eq!(hub.take_responses(1).len(), 1);
}

#[test]
fn replayed_revisions_are_ignored_and_skipped_ones_come_from_history() {
    let (mut store, mut hub) = setup();
    hub.create(1, &watch(b"k", b"", 0)).unwrap_or(-9);
    hub.take_responses(1);
    let first = put(&mut store, b"k", b"1");
    apply(&mut hub, first.clone());
    apply(&mut hub, first);
    // The driver missed revision 3.
    put(&mut store, b"k", b"2");
    apply(&mut hub, put(&mut store, b"k", b"3"));
    hub.catch_up(&store, 0);
    let revs: Vec<i64> = hub
        .take_responses(1)
        .iter()
        .flat_map(|r| r.events.iter().map(|e| e.kv.mod_revision))
        .collect();
    assert_eq!(revs, vec![2, 3, 4]);
}

#[test]
fn drop_stream_forgets_everything() {
    let (mut store, mut hub) = setup();
    hub.create(1, &watch(b"k", b"", 0)).unwrap_or(-9);
    hub.create(1, &watch(b"a", b"z", 1)).unwrap_or(-9);
    hub.drop_stream(1);
    assert_eq!(hub.watcher_count(), 0);
    assert_eq!(hub.unsynced_count(), 0);
    apply(&mut hub, put(&mut store, b"k", b"1"));
    assert!(!hub.has_pending(1));
    assert!(hub.take_ready().is_empty());
}

// ---- model-based checker ----

use crate::test_rng::Rng;

const KEYS: [&[u8]; 8] = [b"a", b"ab", b"abc", b"b", b"ba", b"c", b"d", b"e"];

/// What the checker knows about one watch.
struct Model {
    stream: StreamId,
    id: WatchId,
    req: WatchCreateRequest,
    /// First revision it must see.
    start: i64,
    delivered: Vec<Event>,
    fragments: Vec<Event>,
    /// Revision of the last complete response's last event.
    last_rev: i64,
    fragmented: usize,
    /// Progress responses seen: (revision vouched for, events delivered
    /// by then). No event at or below the revision may arrive later.
    marks: Vec<(i64, usize)>,
    created: bool,
    /// Set once canceled or compacted: nothing may follow.
    ended: bool,
    compacted: Option<i64>,
    canceled_by_client: bool,
}

impl Model {
    fn matches(&self, ev: &Event) -> bool {
        let key = ev.kv.key.as_slice();
        let k = self.req.key.as_slice();
        let in_range = match self.req.range_end.as_slice() {
            [] => key == k,
            [0] => key >= k,
            end => key >= k && key < end,
        };
        let filtered = match ev.kind {
            EventType::Put => self.req.filters.contains(&WatchFilter::NoPut),
            EventType::Delete => self.req.filters.contains(&WatchFilter::NoDelete),
        };
        in_range && !filtered
    }

    fn shape(&self, ev: &Event) -> Event {
        let mut ev = ev.clone();
        if !self.req.prev_kv {
            ev.prev_kv = None;
        }
        ev
    }

    fn receive(&mut self, resp: &WatchResponse) {
        assert!(
            !self.ended,
            "response after the end for {}: {resp:?}",
            self.id
        );
        if resp.created {
            assert!(!self.created && !resp.canceled);
            self.created = true;
            return;
        }
        assert!(self.created, "response before created");
        if resp.compact_revision != 0 {
            assert!(resp.canceled && resp.events.is_empty() && self.fragments.is_empty());
            self.ended = true;
            self.compacted = Some(resp.compact_revision);
            return;
        }
        if resp.canceled {
            assert!(self.canceled_by_client);
            self.ended = true;
            return;
        }
        if resp.events.is_empty() {
            // A progress notification: nothing pending in fragments, and
            // it may not claim a revision older than what it has seen.
            assert!(self.fragments.is_empty());
            assert!(resp.header.revision >= self.last_rev);
            self.marks
                .push((resp.header.revision, self.delivered.len()));
            return;
        }
        if resp.fragment {
            assert!(self.req.fragment, "fragment on a watch that did not ask");
            self.fragmented += 1;
        }
        self.fragments.extend(resp.events.iter().cloned());
        if resp.fragment {
            return;
        }
        let events = std::mem::take(&mut self.fragments);
        let first = events.first().map_or(0, |e| e.kv.mod_revision);
        let last = events.last().map_or(0, |e| e.kv.mod_revision);
        // Atomic: a revision never continues in a later response.
        assert!(first > self.last_rev, "revision {first} split or repeated");
        assert!(resp.header.revision >= last);
        self.last_rev = last;
        self.delivered.extend(events);
    }
}

/// Compares a watcher's delivered events with the history it should have
/// seen. At a revision that was a compaction point, replay holds only what
/// compaction kept (see the module doc), so there the delivered events may
/// lack deletes and `prev_kv`, but must not invent or reorder anything.
fn check_stream(m: &Model, history: &[(i64, Vec<Event>)], compactions: &BTreeSet<i64>, upto: i64) {
    let mut want: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
    for (rev, evs) in history {
        if *rev < m.start || *rev > upto {
            continue;
        }
        let evs: Vec<Event> = evs
            .iter()
            .filter(|e| m.matches(e))
            .map(|e| m.shape(e))
            .collect();
        if !evs.is_empty() {
            want.insert(*rev, evs);
        }
    }
    let mut got: BTreeMap<i64, Vec<Event>> = BTreeMap::new();
    let mut prev = 0;
    for ev in &m.delivered {
        assert!(ev.kv.mod_revision >= prev, "out of order");
        prev = ev.kv.mod_revision;
        got.entry(ev.kv.mod_revision).or_default().push(ev.clone());
    }
    let ended_early = m.compacted.is_some() || m.canceled_by_client;
    if ended_early {
        // A prefix: everything up to the last revision delivered.
        let cut = m.last_rev;
        want.retain(|rev, _| *rev <= cut);
    }
    let revs: BTreeSet<i64> = want.keys().chain(got.keys()).copied().collect();
    for rev in revs {
        let w = want.get(&rev).cloned().unwrap_or_default();
        let g = got.get(&rev).cloned().unwrap_or_default();
        if compactions.contains(&rev) {
            let strip = |e: &Event| Event {
                prev_kv: None,
                ..e.clone()
            };
            let mut wi = w.iter().map(strip);
            for ev in g.iter().map(strip) {
                assert!(
                    wi.any(|x| x == ev),
                    "watch {}:{} rev {rev}: unexpected {ev:?}",
                    m.stream,
                    m.id
                );
            }
            let puts = |v: &Vec<Event>| v.iter().filter(|e| e.kind == EventType::Put).count();
            assert_eq!(puts(&w), puts(&g), "watch {}:{} rev {rev}", m.stream, m.id);
        } else {
            assert_eq!(
                g, w,
                "watch {}:{} rev {rev} (start {})",
                m.stream, m.id, m.start
            );
        }
    }
    for &(rev, len) in &m.marks {
        let late = m.delivered[len..].iter().find(|e| e.kv.mod_revision <= rev);
        assert!(
            late.is_none(),
            "watch {}:{}: progress at {rev} came before {late:?}",
            m.stream,
            m.id
        );
    }
    if let Some(compact) = m.compacted {
        // Compacted only if what it still needed was gone.
        assert!(m.start.max(m.last_rev + 1) < compact, "needless compaction");
    }
}

fn random_watch(rng: &mut Rng, current: i64, next_client_id: &mut i64) -> WatchCreateRequest {
    let key = KEYS[rng.below(KEYS.len() as u64) as usize].to_vec();
    let range_end = match rng.below(4) {
        0 => Vec::new(),
        1 => {
            // Prefix.
            let mut end = key.clone();
            if let Some(last) = end.last_mut() {
                *last += 1;
            }
            end
        }
        2 => vec![0],
        _ => vec![b'c' + rng.below(3) as u8],
    };
    let range_end = if !range_end.is_empty() && range_end != [0] && range_end <= key {
        Vec::new()
    } else {
        range_end
    };
    let start_revision = match rng.below(6) {
        0 | 1 => 0,
        2 => current + rng.below(3) as i64,
        3 => rng.below(current as u64 + 1) as i64,
        _ => current - rng.below(40) as i64,
    };
    let mut filters = Vec::new();
    if rng.chance(15) {
        filters.push(WatchFilter::NoPut);
    } else if rng.chance(15) {
        filters.push(WatchFilter::NoDelete);
    }
    let watch_id = if rng.chance(30) {
        *next_client_id += 1;
        *next_client_id
    } else {
        0
    };
    WatchCreateRequest {
        key,
        range_end,
        start_revision,
        progress_notify: rng.chance(30),
        filters,
        prev_kv: rng.chance(50),
        watch_id,
        fragment: rng.chance(40),
    }
}

fn random_write(rng: &mut Rng, store: &mut Store) -> (Vec<Event>, i64) {
    let key = |rng: &mut Rng| KEYS[rng.below(KEYS.len() as u64) as usize].to_vec();
    let value = |rng: &mut Rng| {
        let len = if rng.chance(10) {
            300
        } else {
            1 + rng.below(8) as usize
        };
        vec![b'v'; len]
    };
    match rng.below(10) {
        0..=4 => {
            let k = key(rng);
            let v = value(rng);
            put(store, &k, &v)
        }
        5 | 6 => {
            let k = key(rng);
            delete(store, &k, b"")
        }
        7 => {
            let k = key(rng);
            delete(store, &k, b"c")
        }
        _ => {
            let mut picked: Vec<Vec<u8>> = Vec::new();
            for _ in 0..1 + rng.below(4) {
                let k = key(rng);
                if !picked.contains(&k) {
                    picked.push(k);
                }
            }
            let ops = picked
                .into_iter()
                .map(|k| {
                    if rng.chance(70) {
                        RequestOp::Put(PutRequest {
                            key: k,
                            value: value(rng),
                            ..PutRequest::default()
                        })
                    } else {
                        RequestOp::DeleteRange(DeleteRangeRequest {
                            key: k,
                            ..DeleteRangeRequest::default()
                        })
                    }
                })
                .collect();
            let txn = TxnRequest {
                success: ops,
                ..TxnRequest::default()
            };
            match store.txn(&txn, &|_| true) {
                Ok((_, evs)) => (evs, store.revision()),
                Err(e) => panic!("txn: {e}"),
            }
        }
    }
}

fn run_model(seed: u64, steps: usize) {
    let mut rng = Rng(seed);
    let mut store = Store::new();
    let config = WatchConfig {
        max_pending_responses: 2 + rng.below(8) as usize,
        max_pending_bytes: 2000 + rng.below(4000) as usize,
        max_response_bytes: 400 + rng.below(600) as usize,
        progress_interval_ms: 50,
        max_catch_up_watchers: 1 + rng.below(6) as usize,
        // Often tiny, so rounds stop mid-way; 0 (no limit) now and then.
        max_catch_up_visits: rng.below(12) as usize,
    };
    let mut hub = WatchHub::new(config, store.revision());
    let mut history: Vec<(i64, Vec<Event>)> = Vec::new();
    let mut compactions = BTreeSet::new();
    let mut models: Vec<Model> = Vec::new();
    let mut index: BTreeMap<(StreamId, WatchId), usize> = BTreeMap::new();
    let mut slow = [false; 4];
    let mut next_client_id = 1000;
    let mut now = 0u64;

    let deliver = |hub: &mut WatchHub,
                   models: &mut Vec<Model>,
                   index: &BTreeMap<(StreamId, WatchId), usize>,
                   stream: StreamId| {
        for resp in hub.take_responses(stream) {
            if resp.watch_id == -1 {
                // Stream-wide progress: every watch must be up to date.
                let live = models
                    .iter_mut()
                    .filter(|m| m.stream == stream && m.created && !m.ended);
                for m in live {
                    assert!(m.fragments.is_empty());
                    assert!(resp.header.revision >= m.last_rev);
                    m.marks.push((resp.header.revision, m.delivered.len()));
                }
                continue;
            }
            let Some(&i) = index.get(&(stream, resp.watch_id)) else {
                panic!("response for unknown watch {stream}:{}", resp.watch_id);
            };
            models[i].receive(&resp);
        }
    };

    for _ in 0..steps {
        now += 10;
        match rng.below(100) {
            0..=44 => {
                let (evs, rev) = random_write(&mut rng, &mut store);
                if !evs.is_empty() {
                    history.push((rev, evs.clone()));
                    hub.on_apply(&evs, rev);
                }
            }
            45..=54 => {
                let stream = rng.below(4);
                let req = random_watch(&mut rng, store.revision(), &mut next_client_id);
                let current = hub.revision();
                match hub.create(stream, &req) {
                    Ok(id) => {
                        let start = if req.start_revision == 0 {
                            current + 1
                        } else if req.start_revision > current {
                            req.start_revision
                        } else {
                            req.start_revision.max(1)
                        };
                        index.insert((stream, id), models.len());
                        models.push(Model {
                            stream,
                            id,
                            req,
                            start,
                            delivered: Vec::new(),
                            fragments: Vec::new(),
                            last_rev: 0,
                            fragmented: 0,
                            marks: Vec::new(),
                            created: false,
                            ended: false,
                            compacted: None,
                            canceled_by_client: false,
                        });
                    }
                    Err(e) => panic!("create refused: {e}"),
                }
            }
            55..=57 => {
                let live: Vec<usize> = (0..models.len())
                    .filter(|&i| !models[i].ended && !models[i].canceled_by_client)
                    .collect();
                if !live.is_empty() {
                    let i = live[rng.below(live.len() as u64) as usize];
                    let (stream, id) = (models[i].stream, models[i].id);
                    // It may have been compacted in the hub already, with
                    // the response still queued.
                    if hub.cancel(stream, id).is_ok() {
                        models[i].canceled_by_client = true;
                    }
                }
            }
            58 => {
                // Compact a little behind the head, as auto-compaction does,
                // so that some slow watchers survive and some do not.
                let low = store.compact_revision() + 1;
                let high = store.revision() - rng.below(40) as i64;
                if low <= high {
                    let at = low + rng.below((high - low + 1) as u64) as i64;
                    if store.compact(at).is_ok() {
                        compactions.insert(at);
                    }
                }
            }
            62..=74 => {
                let batch = rng.below(5) as usize;
                hub.catch_up(&store, batch);
            }
            75..=79 => {
                let s = rng.below(4) as usize;
                slow[s] = !slow[s];
            }
            59..=61 | 80..=81 => hub.tick_progress(now),
            82 => hub.request_progress(rng.below(4)),
            _ => {}
        }
        for stream in hub.take_ready() {
            if !slow[stream as usize] && rng.chance(70) {
                deliver(&mut hub, &mut models, &index, stream);
            }
        }
    }

    // Let everyone catch up and drain.
    let mut rounds = 0;
    loop {
        for stream in 0..4 {
            deliver(&mut hub, &mut models, &index, stream);
        }
        if hub.unsynced_count() == 0 {
            break;
        }
        hub.catch_up(&store, 3);
        rounds += 1;
        assert!(rounds < 100_000, "catch-up does not converge");
    }
    for stream in 0..4 {
        deliver(&mut hub, &mut models, &index, stream);
    }
    let upto = store.revision();
    let mut compacted = 0;
    for m in &models {
        assert!(m.created);
        assert!(m.fragments.is_empty(), "unfinished fragments");
        check_stream(m, &history, &compactions, upto);
        if m.compacted.is_some() {
            compacted += 1;
        }
    }
    // Keep the generator honest: the interesting paths were taken.
    assert!(models.len() > 10, "seed {seed}: too few watches");
    let fragmented: usize = models.iter().map(|m| m.fragmented).sum();
    eprintln!(
        "seed {seed}: {} watches, {compacted} compacted, {} demotions, {fragmented} fragments, {} progress, rev {upto}",
        models.len(),
        hub.demotions,
        models.iter().map(|m| m.marks.len()).sum::<usize>(),
    );
}

#[test]
fn model_checker_many_seeds() {
    let seeds: u64 = std::env::var("QED_WATCH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    for seed in 0..seeds {
        run_model(seed, 1500);
    }
}
