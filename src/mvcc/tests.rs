//! One test per etcd rule the store implements. Where a test pins a quirk
//! of etcd 3.4, its name or comment says so.

use super::*;
use qed_wire::kv::*;

fn no_lease(_: i64) -> bool {
    false
}

fn any_lease(_: i64) -> bool {
    true
}

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn put_req(k: &str, v: &str) -> PutRequest {
    PutRequest {
        key: b(k),
        value: b(v),
        ..Default::default()
    }
}

fn put(s: &mut Store, k: &str, v: &str) -> i64 {
    s.put(&put_req(k, v), &no_lease).unwrap().0.header.revision
}

fn del(s: &mut Store, k: &str, end: &str) -> DeleteRangeResponse {
    let req = DeleteRangeRequest {
        key: b(k),
        range_end: b(end),
        prev_kv: true,
    };
    s.delete_range(&req).unwrap().0
}

fn range_req(k: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: b(k),
        range_end: b(end),
        ..Default::default()
    }
}

fn get(s: &Store, k: &str) -> Option<KeyValue> {
    s.range(&range_req(k, "")).unwrap().kvs.pop()
}

fn keys(resp: &RangeResponse) -> Vec<String> {
    resp.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

fn get_op(k: &str) -> RequestOp {
    RequestOp::Range(range_req(k, ""))
}

fn put_op(k: &str, v: &str) -> RequestOp {
    RequestOp::Put(put_req(k, v))
}

fn del_op(k: &str, end: &str) -> RequestOp {
    RequestOp::DeleteRange(DeleteRangeRequest {
        key: b(k),
        range_end: b(end),
        prev_kv: false,
    })
}

fn cmp(k: &str, result: CompareResult, target: CompareTarget) -> Compare {
    Compare {
        result,
        target,
        key: b(k),
        range_end: Vec::new(),
    }
}

fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare,
        success,
        failure,
    }
}

// ---- revisions and generations ----

#[test]
fn fresh_store_is_at_revision_one_and_never_compacted() {
    let s = Store::new();
    assert_eq!(s.revision(), 1);
    assert_eq!(s.compact_revision(), 0);
    assert_eq!(s.range(&range_req("a", "")).unwrap().header.revision, 1);
}

#[test]
fn each_put_bumps_main_revision_and_version() {
    let mut s = Store::new();
    assert_eq!(put(&mut s, "a", "1"), 2);
    assert_eq!(put(&mut s, "a", "2"), 3);
    let kv = get(&s, "a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    assert_eq!(kv.value, b("2"));
}

#[test]
fn delete_ends_a_generation_and_the_next_put_starts_at_version_one() {
    let mut s = Store::new();
    put(&mut s, "a", "1");
    put(&mut s, "a", "2");
    let d = del(&mut s, "a", "");
    assert_eq!((d.deleted, d.header.revision), (1, 4));
    assert!(get(&s, "a").is_none());
    assert_eq!(put(&mut s, "a", "3"), 5);
    let kv = get(&s, "a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
}

#[test]
fn deleting_nothing_does_not_bump_the_revision() {
    let mut s = Store::new();
    put(&mut s, "a", "1");
    let (resp, events) = s
        .delete_range(&DeleteRangeRequest {
            key: b("zz"),
            ..Default::default()
        })
        .unwrap();
    assert_eq!((resp.deleted, resp.header.revision), (0, 2));
    assert!(events.is_empty());
    assert_eq!(s.revision(), 2);
}

// ---- range ----

#[test]
fn historical_reads_see_the_past_and_header_is_current_revision() {
    let mut s = Store::new();
    put(&mut s, "a", "1"); // 2
    put(&mut s, "a", "2"); // 3
    del(&mut s, "a", ""); // 4
    let at = |rev| {
        let mut r = range_req("a", "");
        r.revision = rev;
        s.range(&r)
    };
    assert!(at(1).unwrap().kvs.is_empty());
    assert_eq!(at(2).unwrap().kvs[0].value, b("1"));
    assert_eq!(at(3).unwrap().kvs[0].value, b("2"));
    assert!(at(4).unwrap().kvs.is_empty());
    // etcd's header carries the store's revision, not the one read at.
    assert_eq!(at(2).unwrap().header.revision, 4);
    assert_eq!(at(5), Err(MvccError::FutureRev));
    // Zero and below mean "now".
    assert!(at(-3).unwrap().kvs.is_empty());
}

#[test]
fn range_end_single_key_span_from_key_and_prefix() {
    let mut s = Store::new();
    for k in ["a", "ab", "abc", "b", "c"] {
        put(&mut s, k, "v");
    }
    assert_eq!(keys(&s.range(&range_req("ab", "")).unwrap()), ["ab"]);
    assert_eq!(
        keys(&s.range(&range_req("ab", "b")).unwrap()),
        ["ab", "abc"]
    );
    assert_eq!(
        keys(&s.range(&range_req("ab", "\0")).unwrap()),
        ["ab", "abc", "b", "c"]
    );
    // prefix "a": caller computes end "b"
    assert_eq!(
        keys(&s.range(&range_req("a", "b")).unwrap()),
        ["a", "ab", "abc"]
    );
    // An end at or before the key is an empty range.
    assert!(s.range(&range_req("b", "a")).unwrap().kvs.is_empty());
    assert!(s.range(&range_req("b", "b")).unwrap().kvs.is_empty());
    assert_eq!(s.range(&range_req("", "")), Err(MvccError::EmptyKey));
}

#[test]
fn limit_sets_more_and_count_is_total_before_limit() {
    let mut s = Store::new();
    for k in ["a", "b", "c", "d"] {
        put(&mut s, k, "v");
    }
    let mut r = range_req("a", "\0");
    r.limit = 2;
    let resp = s.range(&r).unwrap();
    assert_eq!(keys(&resp), ["a", "b"]);
    assert!(resp.more);
    assert_eq!(resp.count, 4);
    r.limit = 4;
    let resp = s.range(&r).unwrap();
    assert!(!resp.more);
    assert_eq!(resp.kvs.len(), 4);
}

#[test]
fn count_only_and_keys_only() {
    let mut s = Store::new();
    for k in ["a", "b", "c"] {
        put(&mut s, k, "v");
    }
    let mut r = range_req("a", "\0");
    r.count_only = true;
    r.limit = 1;
    let resp = s.range(&r).unwrap();
    assert!(resp.kvs.is_empty());
    assert_eq!(resp.count, 3);
    assert!(!resp.more);
    let mut r = range_req("a", "\0");
    r.keys_only = true;
    let resp = s.range(&r).unwrap();
    assert_eq!(keys(&resp), ["a", "b", "c"]);
    assert!(resp
        .kvs
        .iter()
        .all(|kv| kv.value.is_empty() && kv.version == 1));
}

#[test]
fn sort_order_and_target_follow_apply_range() {
    let mut s = Store::new();
    put(&mut s, "b", "1"); // 2
    put(&mut s, "a", "3"); // 3
    put(&mut s, "c", "2"); // 4
    put(&mut s, "a", "0"); // 5
    let sorted = |order, target| {
        let mut r = range_req("a", "\0");
        r.sort_order = order;
        r.sort_target = target;
        keys(&s.range(&r).unwrap())
    };
    assert_eq!(sorted(SortOrder::None, SortTarget::Key), ["a", "b", "c"]);
    assert_eq!(sorted(SortOrder::Descend, SortTarget::Key), ["c", "b", "a"]);
    // A target other than key with order None means ascend.
    assert_eq!(sorted(SortOrder::None, SortTarget::Mod), ["b", "c", "a"]);
    assert_eq!(
        sorted(SortOrder::Descend, SortTarget::Create),
        ["c", "a", "b"]
    );
    assert_eq!(
        sorted(SortOrder::Ascend, SortTarget::Value),
        ["a", "b", "c"]
    );
    assert_eq!(
        sorted(SortOrder::Descend, SortTarget::Version),
        ["a", "b", "c"]
    );
}

#[test]
fn etcd_quirk_sort_target_without_order_sorts_only_the_fetched_page() {
    // Checked against etcd 3.4.23: `get k --prefix --sort-by=VERSION
    // --limit=2` answers k2, k3 here, not k4, k2.
    let mut s = Store::new();
    for _ in 0..3 {
        put(&mut s, "k1", "x");
    }
    for _ in 0..2 {
        put(&mut s, "k2", "x");
        put(&mut s, "k3", "x");
    }
    put(&mut s, "k4", "x");
    let mut r = range_req("k", "l");
    r.sort_target = SortTarget::Version;
    r.limit = 2;
    let resp = s.range(&r).unwrap();
    assert_eq!(keys(&resp), ["k2", "k3"]);
    assert!(resp.more);
    assert_eq!(resp.count, 4);
    r.sort_order = SortOrder::Ascend;
    assert_eq!(keys(&s.range(&r).unwrap()), ["k4", "k2"]);
}

#[test]
fn sort_happens_before_limit() {
    let mut s = Store::new();
    for k in ["a", "b", "c"] {
        put(&mut s, k, "v");
    }
    let mut r = range_req("a", "\0");
    r.sort_order = SortOrder::Descend;
    r.limit = 1;
    let resp = s.range(&r).unwrap();
    assert_eq!(keys(&resp), ["c"]);
    assert!(resp.more);
    assert_eq!(resp.count, 3);
}

#[test]
fn revision_filters_prune_after_fetch_without_changing_count() {
    let mut s = Store::new();
    put(&mut s, "a", "v"); // 2
    put(&mut s, "b", "v"); // 3
    put(&mut s, "c", "v"); // 4
    put(&mut s, "d", "v"); // 5
    put(&mut s, "a", "w"); // 6, create 2
    let mut r = range_req("a", "\0");
    r.min_mod_revision = 4;
    r.limit = 1;
    let resp = s.range(&r).unwrap();
    // matches a(6), c(4), d(5): limit after the filter, count before it
    assert_eq!(keys(&resp), ["a"]);
    assert!(resp.more);
    assert_eq!(resp.count, 4);

    let mut r = range_req("a", "\0");
    r.max_mod_revision = 3;
    r.limit = 2;
    let resp = s.range(&r).unwrap();
    assert_eq!(keys(&resp), ["b"]);
    assert!(!resp.more);
    assert_eq!(resp.count, 4);

    let mut r = range_req("a", "\0");
    r.min_create_revision = 3;
    r.max_create_revision = 4;
    assert_eq!(keys(&s.range(&r).unwrap()), ["b", "c"]);
}

// ---- put ----

#[test]
fn put_prev_kv_and_events_always_carry_prev() {
    let mut s = Store::new();
    let (resp, events) = s.put(&put_req("a", "1"), &no_lease).unwrap();
    assert!(resp.prev_kv.is_none());
    assert_eq!(events.len(), 1);
    assert!(events[0].prev_kv.is_none());
    // Not asked for: not in the response, still in the event.
    let (resp, events) = s.put(&put_req("a", "2"), &no_lease).unwrap();
    assert!(resp.prev_kv.is_none());
    assert_eq!(events[0].prev_kv.as_ref().unwrap().value, b("1"));
    assert_eq!(events[0].kind, EventType::Put);
    assert_eq!(events[0].kv.version, 2);
    let mut req = put_req("a", "3");
    req.prev_kv = true;
    let (resp, _) = s.put(&req, &no_lease).unwrap();
    assert_eq!(resp.prev_kv.unwrap().value, b("2"));
}

#[test]
fn put_ignore_value_and_ignore_lease_keep_the_current_ones() {
    let mut s = Store::new();
    let mut req = put_req("a", "v");
    req.lease = 7;
    s.put(&req, &any_lease).unwrap();
    let req = PutRequest {
        key: b("a"),
        ignore_value: true,
        lease: 8,
        ..Default::default()
    };
    s.put(&req, &any_lease).unwrap();
    let kv = get(&s, "a").unwrap();
    assert_eq!((kv.value, kv.lease, kv.version), (b("v"), 8, 2));
    let req = PutRequest {
        key: b("a"),
        value: b("w"),
        ignore_lease: true,
        ..Default::default()
    };
    s.put(&req, &no_lease).unwrap();
    let kv = get(&s, "a").unwrap();
    assert_eq!((kv.value, kv.lease), (b("w"), 8));
}

#[test]
fn put_errors_in_etcd_order() {
    let mut s = Store::new();
    let err = |s: &mut Store, req: PutRequest, leases: &dyn Fn(i64) -> bool| {
        s.put(&req, leases).unwrap_err()
    };
    assert_eq!(
        err(&mut s, put_req("", "v"), &any_lease),
        MvccError::EmptyKey
    );
    let mut r = put_req("a", "v");
    r.ignore_value = true;
    assert_eq!(err(&mut s, r, &any_lease), MvccError::ValueProvided);
    let mut r = put_req("a", "");
    r.ignore_lease = true;
    r.lease = 5;
    assert_eq!(err(&mut s, r, &any_lease), MvccError::LeaseProvided);
    let mut r = put_req("a", "v");
    r.lease = 5;
    assert_eq!(err(&mut s, r, &no_lease), MvccError::LeaseNotFound);
    // The lease is looked up before the key.
    let mut r = put_req("missing", "");
    r.ignore_value = true;
    r.lease = 5;
    assert_eq!(err(&mut s, r.clone(), &no_lease), MvccError::LeaseNotFound);
    assert_eq!(err(&mut s, r, &any_lease), MvccError::KeyNotFound);
    let mut r = put_req("missing", "v");
    r.ignore_lease = true;
    assert_eq!(err(&mut s, r, &any_lease), MvccError::KeyNotFound);
    assert_eq!(s.revision(), 1);
    assert_eq!(s.size_bytes(), 0);
}

// ---- delete ----

#[test]
fn delete_range_returns_prev_kvs_and_tombstone_events() {
    let mut s = Store::new();
    for k in ["a", "b", "c"] {
        put(&mut s, k, "v");
    }
    let req = DeleteRangeRequest {
        key: b("a"),
        range_end: b("c"),
        prev_kv: true,
    };
    let (resp, events) = s.delete_range(&req).unwrap();
    assert_eq!(resp.deleted, 2);
    assert_eq!(resp.header.revision, 5);
    assert_eq!(resp.prev_kvs.len(), 2);
    assert_eq!(resp.prev_kvs[1].key, b("b"));
    assert_eq!(events.len(), 2);
    for (e, k) in events.iter().zip(["a", "b"]) {
        assert_eq!(e.kind, EventType::Delete);
        // etcd's delete event: key and the delete's revision, nothing else.
        assert_eq!(
            e.kv,
            KeyValue {
                key: b(k),
                mod_revision: 5,
                ..Default::default()
            }
        );
        assert_eq!(e.prev_kv.as_ref().unwrap().key, b(k));
    }
    let resp = s
        .delete_range(&DeleteRangeRequest {
            key: b("a"),
            range_end: b("\0"),
            prev_kv: false,
        })
        .unwrap()
        .0;
    assert_eq!(resp.deleted, 1);
    assert!(resp.prev_kvs.is_empty());
    assert_eq!(
        s.delete_range(&DeleteRangeRequest::default()),
        Err(MvccError::EmptyKey)
    );
}

// ---- txn ----

#[test]
fn txn_compares_each_target_and_result() {
    let mut s = Store::new();
    let mut r = put_req("a", "m");
    r.lease = 9;
    s.put(&r, &any_lease).unwrap(); // a: create 2, mod 2, version 1
    put(&mut s, "x", "y"); // 3
    use CompareResult::*;
    use CompareTarget::*;
    let cases = [
        (Version(1), Equal, true),
        (Version(0), Greater, true),
        (Version(2), Less, true),
        (Version(1), NotEqual, false),
        (Create(2), Equal, true),
        (Mod(3), Less, true),
        (Mod(2), Greater, false),
        (Value(b("m")), Equal, true),
        (Value(b("a")), Greater, true),
        (Value(b("z")), Less, true),
        (Value(b("m")), NotEqual, false),
        (Lease(9), Equal, true),
        (Lease(0), Greater, true),
    ];
    for (target, result, want) in cases {
        let t = txn(vec![cmp("a", result, target.clone())], vec![], vec![]);
        let (resp, _) = s.txn(&t, &no_lease).unwrap();
        assert_eq!(resp.succeeded, want, "{target:?} {result:?}");
    }
}

#[test]
fn txn_compare_on_missing_key_uses_zero_but_value_compare_fails() {
    let mut s = Store::new();
    use CompareResult::*;
    use CompareTarget::*;
    let succeeded = |s: &mut Store, c| {
        s.txn(&txn(vec![c], vec![], vec![]), &no_lease)
            .unwrap()
            .0
            .succeeded
    };
    assert!(succeeded(&mut s, cmp("nope", Equal, Version(0))));
    assert!(succeeded(&mut s, cmp("nope", Equal, Create(0))));
    assert!(succeeded(&mut s, cmp("nope", Equal, Mod(0))));
    assert!(succeeded(&mut s, cmp("nope", Equal, Lease(0))));
    assert!(!succeeded(&mut s, cmp("nope", Equal, Value(vec![]))));
    assert!(!succeeded(&mut s, cmp("nope", NotEqual, Value(b("x")))));
}

#[test]
fn txn_compare_over_a_range_needs_every_key_to_match() {
    let mut s = Store::new();
    put(&mut s, "k1", "v");
    put(&mut s, "k2", "v");
    let mut c = cmp("k", CompareResult::Equal, CompareTarget::Value(b("v")));
    c.range_end = b("l");
    assert!(
        s.txn(&txn(vec![c.clone()], vec![], vec![]), &no_lease)
            .unwrap()
            .0
            .succeeded
    );
    put(&mut s, "k3", "w");
    assert!(
        !s.txn(&txn(vec![c], vec![], vec![]), &no_lease)
            .unwrap()
            .0
            .succeeded
    );
}

#[test]
fn txn_is_one_revision_with_increasing_subs_and_reads_see_earlier_writes() {
    let mut s = Store::new();
    put(&mut s, "a", "0"); // 2
    let t = txn(
        vec![],
        vec![
            get_op("a"),
            put_op("a", "1"),
            get_op("a"),
            put_op("b", "2"),
            del_op("c", ""),
        ],
        vec![],
    );
    let (resp, events) = s.txn(&t, &no_lease).unwrap();
    assert!(resp.succeeded);
    assert_eq!(resp.header.revision, 3);
    assert_eq!(s.revision(), 3);
    let ResponseOp::Range(first) = &resp.responses[0] else {
        panic!()
    };
    assert_eq!(first.kvs[0].value, b("0"));
    assert_eq!(first.header.revision, 2);
    let ResponseOp::Put(p) = &resp.responses[1] else {
        panic!()
    };
    assert_eq!(p.header.revision, 3);
    let ResponseOp::Range(second) = &resp.responses[2] else {
        panic!()
    };
    assert_eq!(second.kvs[0].value, b("1"));
    assert_eq!(second.header.revision, 3);
    let ResponseOp::DeleteRange(d) = &resp.responses[4] else {
        panic!()
    };
    assert_eq!((d.deleted, d.header.revision), (0, 3));
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.kv.mod_revision == 3));
    // Sub revisions order the changes within the revision.
    let replay = s.events_since(3, b"a", b"\0", 0).unwrap();
    assert_eq!(
        replay.iter().map(|e| e.kv.key.clone()).collect::<Vec<_>>(),
        [b("a"), b("b")]
    );
}

#[test]
fn read_only_txn_does_not_bump_the_revision() {
    let mut s = Store::new();
    put(&mut s, "a", "0");
    let (resp, events) = s
        .txn(&txn(vec![], vec![get_op("a")], vec![]), &no_lease)
        .unwrap();
    assert_eq!(resp.header.revision, 2);
    assert!(events.is_empty());
    let (resp, _) = s
        .txn(&txn(vec![], vec![del_op("zz", "")], vec![]), &no_lease)
        .unwrap();
    assert_eq!(resp.header.revision, 2);
    assert_eq!(s.revision(), 2);
}

#[test]
fn txn_failure_branch_runs_when_a_compare_fails() {
    let mut s = Store::new();
    let t = txn(
        vec![cmp("a", CompareResult::Equal, CompareTarget::Version(1))],
        vec![put_op("a", "then")],
        vec![put_op("a", "else")],
    );
    let (resp, _) = s.txn(&t, &no_lease).unwrap();
    assert!(!resp.succeeded);
    assert_eq!(get(&s, "a").unwrap().value, b("else"));
    let (resp, _) = s.txn(&t, &no_lease).unwrap();
    assert!(resp.succeeded);
    assert_eq!(get(&s, "a").unwrap().value, b("then"));
}

#[test]
fn nested_txn_compares_see_the_state_before_the_txn() {
    let mut s = Store::new();
    let inner = txn(
        vec![cmp("a", CompareResult::Equal, CompareTarget::Version(0))],
        vec![put_op("b", "a-was-missing")],
        vec![put_op("b", "a-existed")],
    );
    let outer = txn(
        vec![],
        vec![put_op("a", "1"), RequestOp::Txn(inner)],
        vec![],
    );
    let (resp, events) = s.txn(&outer, &no_lease).unwrap();
    assert_eq!(get(&s, "b").unwrap().value, b("a-was-missing"));
    assert_eq!(events.len(), 2);
    let ResponseOp::Txn(nested) = &resp.responses[1] else {
        panic!()
    };
    assert!(nested.succeeded);
    // etcd leaves nested txn headers empty.
    assert_eq!(nested.header.revision, 0);
    assert_eq!(resp.header.revision, 2);
}

#[test]
fn txn_op_limit_counts_compares_and_each_branch_and_nested_budget() {
    let mut s = Store::new();
    let many = |n: usize| (0..n).map(|i| get_op(&format!("k{i}"))).collect::<Vec<_>>();
    let ok = txn(vec![], many(128), many(128));
    assert!(s.txn(&ok, &no_lease).is_ok());
    let too_many = txn(vec![], vec![], many(129));
    assert_eq!(
        s.txn(&too_many, &no_lease).unwrap_err(),
        MvccError::TooManyOps
    );
    let compares = (0..129)
        .map(|_| cmp("a", CompareResult::Equal, CompareTarget::Version(0)))
        .collect();
    assert_eq!(
        s.txn(&txn(compares, vec![], vec![]), &no_lease)
            .unwrap_err(),
        MvccError::TooManyOps
    );
    // A nested txn gets 128 minus its parent's largest list.
    let mut outer = many(100);
    outer.push(RequestOp::Txn(txn(vec![], many(27), vec![])));
    assert!(s.txn(&txn(vec![], outer, vec![]), &no_lease).is_ok());
    let mut outer = many(100);
    outer.push(RequestOp::Txn(txn(vec![], many(27), vec![])));
    outer.push(RequestOp::Txn(txn(vec![], vec![], vec![])));
    // Now the parent has 102 ops: 27 is over the nested budget of 26.
    assert_eq!(
        s.txn(&txn(vec![], outer, vec![]), &no_lease).unwrap_err(),
        MvccError::TooManyOps
    );
    s.set_max_txn_ops(2);
    assert_eq!(
        s.txn(&txn(vec![], many(3), vec![]), &no_lease).unwrap_err(),
        MvccError::TooManyOps
    );
}

#[test]
fn txn_empty_keys_are_rejected_everywhere() {
    let mut s = Store::new();
    let empty_cmp = txn(
        vec![cmp("", CompareResult::Equal, CompareTarget::Version(0))],
        vec![],
        vec![],
    );
    assert_eq!(
        s.txn(&empty_cmp, &no_lease).unwrap_err(),
        MvccError::EmptyKey
    );
    for op in [get_op(""), put_op("", "v"), del_op("", "")] {
        let t = txn(vec![], vec![], vec![op]);
        assert_eq!(s.txn(&t, &no_lease).unwrap_err(), MvccError::EmptyKey);
    }
    let mut bad = put_req("a", "v");
    bad.ignore_value = true;
    let nested = txn(vec![], vec![RequestOp::Put(bad)], vec![]);
    let t = txn(vec![], vec![RequestOp::Txn(nested)], vec![]);
    assert_eq!(s.txn(&t, &no_lease).unwrap_err(), MvccError::ValueProvided);
}

#[test]
fn txn_duplicate_writes_are_rejected_like_check_intervals() {
    let mut s = Store::new();
    put(&mut s, "k", "v");
    let dup = |s: &mut Store, ops: Vec<RequestOp>| s.txn(&txn(vec![], ops, vec![]), &no_lease);
    assert_eq!(
        dup(&mut s, vec![put_op("a", "1"), put_op("a", "2")]).unwrap_err(),
        MvccError::DuplicateKey
    );
    assert_eq!(
        dup(&mut s, vec![put_op("b", "1"), del_op("a", "c")]).unwrap_err(),
        MvccError::DuplicateKey
    );
    assert_eq!(
        dup(&mut s, vec![del_op("b", ""), put_op("b", "1")]).unwrap_err(),
        MvccError::DuplicateKey
    );
    // Two deletes may overlap; a range end is exclusive.
    assert!(dup(&mut s, vec![del_op("a", "c"), del_op("b", "")]).is_ok());
    assert!(dup(&mut s, vec![del_op("a", "c"), put_op("c", "1")]).is_ok());
    // Then and else of a nested txn may write the same key...
    let nested = txn(vec![], vec![put_op("x", "1")], vec![put_op("x", "2")]);
    assert!(dup(&mut s, vec![RequestOp::Txn(nested.clone())]).is_ok());
    // ...but not a key the outer level also writes.
    assert_eq!(
        dup(
            &mut s,
            vec![RequestOp::Txn(nested.clone()), put_op("x", "3")]
        )
        .unwrap_err(),
        MvccError::DuplicateKey
    );
    assert_eq!(
        dup(
            &mut s,
            vec![del_op("x", ""), RequestOp::Txn(nested.clone())]
        )
        .unwrap_err(),
        MvccError::DuplicateKey
    );
    // A nested delete against an outer put.
    let nested_del = txn(vec![], vec![del_op("w", "z")], vec![]);
    assert_eq!(
        dup(&mut s, vec![RequestOp::Txn(nested_del), put_op("x", "3")]).unwrap_err(),
        MvccError::DuplicateKey
    );
    // Checked per branch: the failure branch is not compared with success.
    let t = txn(vec![], vec![put_op("a", "1")], vec![put_op("a", "2")]);
    assert!(s.txn(&t, &no_lease).is_ok());
}

#[test]
fn etcd_quirk_from_key_delete_escapes_the_overlap_check() {
    let mut s = Store::new();
    put(&mut s, "b", "old");
    let t = txn(vec![], vec![del_op("a", "\0"), put_op("b", "new")], vec![]);
    let (_, events) = s.txn(&t, &no_lease).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(get(&s, "b").unwrap().value, b("new"));
    assert_eq!(get(&s, "b").unwrap().version, 1);
}

#[test]
fn txn_failing_mid_way_is_undone_completely() {
    // etcd panics here (see txn.rs); we refuse the txn and keep the state.
    let mut s = Store::new();
    put(&mut s, "b", "old");
    put(&mut s, "c", "old");
    let before = (s.revision(), s.size_bytes(), s.hash_kv(0).unwrap());
    let bytes_before = s.to_bytes().unwrap();
    let ignore = PutRequest {
        key: b("b"),
        ignore_value: true,
        ..Default::default()
    };
    let t = txn(
        vec![],
        vec![
            del_op("a", "\0"),
            RequestOp::Put(put_req("z", "new")),
            RequestOp::Put(ignore),
        ],
        vec![],
    );
    assert_eq!(s.txn(&t, &no_lease).unwrap_err(), MvccError::KeyNotFound);
    assert_eq!(
        (s.revision(), s.size_bytes(), s.hash_kv(0).unwrap()),
        before
    );
    assert_eq!(s.to_bytes().unwrap(), bytes_before);
    assert_eq!(s.encoded_len().unwrap(), bytes_before.len());
    assert_eq!(s.events_since(0, b"a", b"\0", 0).unwrap().len(), 2);
}

#[test]
fn txn_apply_checks_only_the_taken_path() {
    let mut s = Store::new();
    let mut missing = put_req("missing", "");
    missing.ignore_value = true;
    let mut leased = put_req("l", "v");
    leased.lease = 42;
    // Not taken: no error.
    let t = txn(vec![], vec![], vec![RequestOp::Put(missing.clone())]);
    assert!(s.txn(&t, &no_lease).is_ok());
    let t = txn(vec![], vec![RequestOp::Put(missing)], vec![]);
    assert_eq!(s.txn(&t, &no_lease).unwrap_err(), MvccError::KeyNotFound);
    let t = txn(vec![], vec![RequestOp::Put(leased)], vec![]);
    assert_eq!(s.txn(&t, &no_lease).unwrap_err(), MvccError::LeaseNotFound);
    assert!(s.txn(&t, &any_lease).is_ok());
}

#[test]
fn txn_range_revisions_are_checked_before_any_write() {
    let mut s = Store::new();
    put(&mut s, "a", "1"); // 2
    put(&mut s, "a", "2"); // 3
    let mut future = range_req("a", "");
    future.revision = 4;
    let t = txn(
        vec![],
        vec![put_op("b", "1"), RequestOp::Range(future)],
        vec![],
    );
    assert_eq!(s.txn(&t, &no_lease).unwrap_err(), MvccError::FutureRev);
    assert_eq!(s.revision(), 3);
    s.compact(3).unwrap();
    let mut old = range_req("a", "");
    old.revision = 2;
    let t = txn(vec![], vec![RequestOp::Range(old)], vec![]);
    assert_eq!(s.txn(&t, &no_lease).unwrap_err(), MvccError::Compacted);
    // etcd quirk: in a txn a negative revision is below the first revision.
    let mut negative = range_req("a", "");
    negative.revision = -1;
    let t = txn(vec![], vec![RequestOp::Range(negative)], vec![]);
    assert_eq!(s.txn(&t, &no_lease).unwrap_err(), MvccError::Compacted);
    // A historical read inside a txn works.
    let mut at3 = range_req("a", "");
    at3.revision = 3;
    let t = txn(
        vec![],
        vec![put_op("a", "x"), RequestOp::Range(at3)],
        vec![],
    );
    let (resp, _) = s.txn(&t, &no_lease).unwrap();
    let ResponseOp::Range(r) = &resp.responses[1] else {
        panic!()
    };
    assert_eq!(r.kvs[0].value, b("2"));
    assert_eq!(r.header.revision, 4);
}

// ---- compaction ----

#[test]
fn compact_checks_its_revision() {
    let mut s = Store::new();
    put(&mut s, "a", "1"); // 2
    assert_eq!(s.compact(3), Err(MvccError::FutureRev));
    assert_eq!(s.compact(2), Ok(()));
    assert_eq!(s.compact_revision(), 2);
    assert_eq!(s.compact(2), Err(MvccError::Compacted));
    assert_eq!(s.compact(1), Err(MvccError::Compacted));
}

#[test]
fn compaction_keeps_newest_live_value_per_key_and_drops_deleted_keys() {
    let mut s = Store::new();
    put(&mut s, "a", "1"); // 2
    put(&mut s, "a", "2"); // 3
    put(&mut s, "b", "1"); // 4
    del(&mut s, "b", ""); // 5
    put(&mut s, "a", "3"); // 6
    put(&mut s, "c", "1"); // 7
    s.compact(5).unwrap();
    let at = |s: &Store, rev| {
        let mut r = range_req("a", "\0");
        r.revision = rev;
        s.range(&r).map(|r| {
            r.kvs
                .into_iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(&kv.key).into_owned(),
                        kv.mod_revision,
                    )
                })
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(at(&s, 4), Err(MvccError::Compacted));
    assert_eq!(at(&s, 5).unwrap(), [("a".into(), 3)]);
    assert_eq!(at(&s, 6).unwrap(), [("a".into(), 6)]);
    assert_eq!(at(&s, 7).unwrap(), [("a".into(), 6), ("c".into(), 7)]);
    // "b" is gone from the index entirely.
    assert_eq!(s.key_count(), 2);
    // Versions and create revisions survive compaction.
    let kv = get(&s, "a").unwrap();
    assert_eq!((kv.create_revision, kv.version), (2, 3));
}

#[test]
fn compaction_frees_memory() {
    let mut s = Store::new();
    for i in 0..100 {
        put(&mut s, "a", &format!("{i:0100}"));
    }
    let before = s.size_bytes();
    s.compact(s.revision()).unwrap();
    assert!(
        s.size_bytes() * 50 < before,
        "{} vs {before}",
        s.size_bytes()
    );
    del(&mut s, "a", "");
    s.compact(s.revision()).unwrap();
    assert_eq!(s.size_bytes(), 0);
}

// ---- watch replay ----

#[test]
fn events_since_replays_in_order_with_prev_kv_and_never_splits_a_revision() {
    let mut s = Store::new();
    put(&mut s, "a", "1"); // 2
    let t = txn(
        vec![],
        vec![put_op("a", "2"), put_op("b", "1"), put_op("z", "1")],
        vec![],
    );
    s.txn(&t, &no_lease).unwrap(); // 3
    del(&mut s, "a", ""); // 4
    let all = s.events_since(0, b"a", b"c", 0).unwrap();
    let summary: Vec<_> = all
        .iter()
        .map(|e| {
            (
                e.kind,
                e.kv.key.clone(),
                e.kv.mod_revision,
                e.prev_kv.is_some(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (EventType::Put, b("a"), 2, false),
            (EventType::Put, b("a"), 3, true),
            (EventType::Put, b("b"), 3, false),
            (EventType::Delete, b("a"), 4, true),
        ]
    );
    // max 2 would end inside revision 3: it is kept whole.
    let some = s.events_since(2, b"a", b"c", 2).unwrap();
    assert_eq!(some.len(), 3);
    let some = s.events_since(3, b"a", b"\0", 1).unwrap();
    assert_eq!(some.len(), 3);
    assert!(s.events_since(5, b"a", b"\0", 0).unwrap().is_empty());
    assert_eq!(s.events_since(4, b"a", b"", 0).unwrap().len(), 1);
}

/// Catch-up reads with bounded work: a single key comes from its own
/// index (visiting only its changes, however long the log), a range stops
/// at a revision boundary once its visits are spent and says how far it got.
#[test]
fn history_since_bounds_its_work_and_says_how_far_it_read() {
    let mut s = Store::new();
    put(&mut s, "k", "1"); // 2
    for i in 0..100 {
        put(&mut s, &format!("a{i:03}"), "x"); // 3..=102
    }
    let t = txn(vec![], vec![put_op("k", "2"), put_op("r1", "1")], vec![]);
    s.txn(&t, &no_lease).unwrap(); // 103
    put(&mut s, "r2", "1"); // 104

    let one = s.history_since(1, b"k", b"", 0, 0).unwrap();
    assert_eq!(one.visited, 2, "only k's own changes are looked at");
    assert_eq!(one.through, s.revision());
    let revs: Vec<i64> = one.events.iter().map(|e| e.kv.mod_revision).collect();
    assert_eq!(revs, [2, 103]);
    assert!(one.events[1].prev_kv.is_some());
    let capped = s.history_since(1, b"k", b"", 1, 0).unwrap();
    assert_eq!((capped.events.len(), capped.through), (1, 102));

    // A range over the whole log, 10 entries at a time: each read ends at a
    // revision boundary, and resuming after `through` misses nothing.
    let mut from = 1;
    let mut seen = Vec::new();
    for _ in 0..100 {
        let read = s.history_since(from, b"k", b"r3", 0, 10).unwrap();
        assert!(read.visited <= 11, "a revision of two entries may end it");
        seen.extend(
            read.events
                .iter()
                .map(|e| (e.kv.key.clone(), e.kv.mod_revision)),
        );
        from = read.through + 1;
        if read.through == s.revision() {
            break;
        }
    }
    let want: Vec<(Vec<u8>, i64)> = s
        .events_since(1, b"k", b"r3", 0)
        .unwrap()
        .iter()
        .map(|e| (e.kv.key.clone(), e.kv.mod_revision))
        .collect();
    assert_eq!(seen, want);
    assert_eq!(want.len(), 4);
}

#[test]
fn events_since_below_the_compaction_point_is_compacted() {
    let mut s = Store::new();
    put(&mut s, "a", "1"); // 2
    let t = txn(vec![], vec![put_op("b", "1"), del_op("a", "")], vec![]);
    s.txn(&t, &no_lease).unwrap(); // 3
    put(&mut s, "c", "1"); // 4
    s.compact(3).unwrap();
    assert_eq!(s.events_since(2, b"a", b"\0", 0), Err(MvccError::Compacted));
    // etcd serves a watch from exactly the compaction point with what
    // compaction kept of it: the put of "b", not the delete of "a".
    let events = s.events_since(3, b"a", b"\0", 0).unwrap();
    let keys: Vec<_> = events
        .iter()
        .map(|e| (e.kv.key.clone(), e.kv.mod_revision))
        .collect();
    assert_eq!(keys, [(b("b"), 3), (b("c"), 4)]);
}

// ---- hash ----

#[test]
fn hash_kv_is_deterministic_and_checks_revisions() {
    let mut s1 = Store::new();
    let mut s2 = Store::new();
    for s in [&mut s1, &mut s2] {
        put(s, "a", "1");
        put(s, "b", "2");
    }
    let h = s1.hash_kv(0).unwrap();
    assert_eq!(h, s2.hash_kv(0).unwrap());
    assert_eq!((h.revision, h.compact_revision), (3, -1));
    put(&mut s1, "a", "x");
    assert_ne!(s1.hash_kv(0).unwrap().hash, h.hash);
    // Hashing an older revision ignores later writes.
    assert_eq!(s1.hash_kv(3).unwrap().hash, h.hash);
    assert_eq!(s1.hash_kv(5), Err(MvccError::FutureRev));
    s1.compact(3).unwrap();
    assert_eq!(s1.hash_kv(3), Err(MvccError::Compacted));
    assert_eq!(s1.hash_kv(0).unwrap().compact_revision, 3);
    // Values matter, not just keys.
    put(&mut s2, "a", "y");
    assert_ne!(s2.hash_kv(0).unwrap().hash, {
        let mut s3 = Store::new();
        put(&mut s3, "a", "1");
        put(&mut s3, "b", "2");
        put(&mut s3, "a", "x");
        s3.hash_kv(0).unwrap().hash
    });
}

#[test]
fn same_history_and_compaction_give_the_same_hash() {
    let build = |compact: bool| {
        let mut s = Store::new();
        put(&mut s, "a", "1");
        put(&mut s, "a", "2");
        del(&mut s, "a", "");
        put(&mut s, "b", "1");
        if compact {
            s.compact(3).unwrap();
        }
        s
    };
    assert_eq!(build(true).hash_kv(0), build(true).hash_kv(0));
    assert_ne!(build(true).hash_kv(0), build(false).hash_kv(0));
}

// ---- snapshots ----

#[test]
fn snapshot_round_trip_keeps_everything() {
    let mut s = Store::new();
    put(&mut s, "a", "1");
    let mut r = put_req("b", "2");
    r.lease = 3;
    s.put(&r, &any_lease).unwrap();
    put(&mut s, "a", "3");
    del(&mut s, "b", "");
    put(&mut s, "c", "4");
    s.compact(4).unwrap();
    put(&mut s, "d", "5");
    let bytes = s.to_bytes().unwrap();
    let t = Store::from_bytes(&bytes).unwrap();
    assert_eq!(t.revision(), s.revision());
    assert_eq!(t.compact_revision(), s.compact_revision());
    assert_eq!(t.size_bytes(), s.size_bytes());
    assert_eq!(t.hash_kv(0), s.hash_kv(0));
    for rev in 4..=s.revision() {
        let mut r = range_req("a", "\0");
        r.revision = rev;
        assert_eq!(t.range(&r), s.range(&r));
    }
    assert_eq!(
        t.events_since(4, b"a", b"\0", 0),
        s.events_since(4, b"a", b"\0", 0)
    );
    assert_eq!(t.to_bytes().unwrap(), bytes);
}

#[test]
fn corrupt_snapshots_are_refused_not_panicked_on() {
    let mut s = Store::new();
    put(&mut s, "a", "1");
    put(&mut s, "b", "2");
    put(&mut s, "c", &"long value, left in a backing".repeat(3));
    let bytes = s.to_bytes().unwrap();
    // Decoded from bytes and from a backing (values left in it), the same
    // outcome: both refuse, or both give the same store.
    let both = |bytes: &[u8]| {
        let held = Store::from_bytes(bytes);
        let backed = Store::decode_backed(Backing::new(bytes.to_vec()), 0..bytes.len());
        match (&held, &backed) {
            (Ok(a), Ok(b)) => assert_eq!(a.to_bytes().unwrap(), b.to_bytes().unwrap()),
            (Err(_), Err(_)) => {}
            _ => panic!("held {held:?} but backed {backed:?}"),
        }
        held
    };
    assert!(both(&bytes).is_ok());
    for cut in 0..bytes.len() {
        assert!(both(&bytes[..cut]).is_err());
    }
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x55;
        // Either refused or a valid store; never a panic.
        let _ = both(&bad);
    }
}

#[test]
fn a_clone_is_an_independent_snapshot() {
    let mut s = Store::new();
    put(&mut s, "a", "1");
    let view = s.clone();
    put(&mut s, "a", "2");
    del(&mut s, "a", "");
    s.compact(s.revision()).unwrap();
    assert_eq!(get(&view, "a").unwrap().value, b("1"));
    assert_eq!(view.revision(), 2);
    assert!(get(&s, "a").is_none());
}

#[test]
fn errors_map_onto_wire_errors() {
    use qed_wire::Error as W;
    let pairs = [
        (MvccError::EmptyKey, W::EmptyKey),
        (MvccError::KeyNotFound, W::KeyNotFound),
        (MvccError::ValueProvided, W::ValueProvided),
        (MvccError::LeaseProvided, W::LeaseProvided),
        (MvccError::LeaseNotFound, W::LeaseNotFound),
        (MvccError::TooManyOps, W::TooManyOps),
        (MvccError::DuplicateKey, W::DuplicateKey),
        (MvccError::Compacted, W::Compacted),
        (MvccError::FutureRev, W::FutureRev),
    ];
    for (m, w) in pairs {
        assert_eq!(W::from(m), w);
    }
}

#[test]
fn store_is_a_cheap_shareable_value() {
    fn assert_traits<T: Send + Sync + Clone + 'static>() {}
    assert_traits::<Store>();
}

#[test]
fn validators_match_what_apply_refuses() {
    assert_eq!(validate_range(&range_req("", "")), Err(MvccError::EmptyKey));
    assert_eq!(validate_put(&put_req("", "v")), Err(MvccError::EmptyKey));
    assert_eq!(
        validate_delete_range(&DeleteRangeRequest::default()),
        Err(MvccError::EmptyKey)
    );
    let dup = txn(vec![], vec![put_op("a", "1"), put_op("a", "2")], vec![]);
    assert_eq!(validate_txn(&dup, 128), Err(MvccError::DuplicateKey));
    let big = txn(vec![], vec![get_op("a"), get_op("b")], vec![]);
    assert_eq!(validate_txn(&big, 1), Err(MvccError::TooManyOps));
    assert_eq!(validate_txn(&big, 2), Ok(()));
}

#[test]
fn snapshots_with_history_below_the_compaction_point_are_refused() {
    use super::key_index::Change;
    let change = |main, version| Change {
        main,
        create: 2,
        version,
        lease: 0,
        sub: 0,
        value: b"v".as_slice().into(),
    };
    let encode = |compact: i64, changes: Vec<Change>| {
        postcard::to_stdvec(&(5i64, compact, vec![(b("k"), changes)])).unwrap()
    };
    assert!(Store::from_bytes(&encode(3, vec![change(3, 2), change(4, 3)])).is_ok());
    assert!(Store::from_bytes(&encode(3, vec![change(2, 1), change(3, 2)])).is_err());
    assert!(Store::from_bytes(&encode(-1, vec![change(2, 1), change(3, 2)])).is_ok());
    assert!(Store::from_bytes(&encode(3, vec![change(2, 1), change(6, 2)])).is_err());
}

#[test]
fn read_only_txns_run_on_a_shared_view() {
    let mut s = Store::new();
    put(&mut s, "a", "1");
    let read = txn(
        vec![cmp("a", CompareResult::Equal, CompareTarget::Value(b("1")))],
        vec![get_op("a")],
        vec![],
    );
    assert!(is_read_only_txn(&read));
    let view: &Store = &s;
    let resp = view.txn_read_only(&read).unwrap();
    assert!(resp.succeeded);
    assert_eq!(resp.header.revision, 2);
    let ResponseOp::Range(r) = &resp.responses[0] else {
        panic!()
    };
    assert_eq!(r.kvs[0].value, b("1"));
    let write = txn(vec![], vec![], vec![put_op("a", "2")]);
    assert!(!is_read_only_txn(&write));
    assert_eq!(view.txn_read_only(&write), Err(MvccError::NotReadOnly));
    assert_eq!(resp, s.txn(&read, &no_lease).unwrap().0);
    let nested = txn(
        vec![],
        vec![RequestOp::Txn(txn(vec![], vec![], vec![]))],
        vec![],
    );
    assert!(!is_read_only_txn(&nested));
}

#[test]
fn delete_keys_deletes_many_in_one_revision_beyond_the_txn_limit() {
    let mut s = Store::new();
    let keys: Vec<Vec<u8>> = (0..300).map(|i| b(&format!("lease/{i:03}"))).collect();
    for k in &keys {
        s.put(
            &PutRequest {
                key: k.clone(),
                value: b("v"),
                ..Default::default()
            },
            &no_lease,
        )
        .unwrap();
    }
    let before = s.revision();
    // A missing key is skipped, not an error.
    let mut asked = keys.clone();
    asked.push(b("missing"));
    let events = s.delete_keys(&asked);
    assert_eq!(events.len(), 300);
    assert_eq!(s.revision(), before + 1);
    assert!(events
        .iter()
        .all(|e| e.kind == EventType::Delete && e.kv.mod_revision == before + 1));
    assert!(events.iter().all(|e| e.prev_kv.is_some()));
    let all = RangeRequest {
        key: b("lease/"),
        range_end: b("lease0"),
        ..Default::default()
    };
    assert_eq!(s.range(&all).unwrap().kvs.len(), 0);
    // Nothing left to delete: no new revision.
    assert!(s.delete_keys(&keys).is_empty());
    assert_eq!(s.revision(), before + 1);
}
