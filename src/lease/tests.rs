//! One test per lessor rule, checked against etcd 3.4's `lease/lessor.go`.

use super::*;
use qed_wire::kv::KeyValue;

fn primary() -> Lessor {
    let mut l = Lessor::new(LeaseConfig::default());
    l.promote(0, 0);
    l
}

fn put_event(key: &[u8], lease: i64, prev_lease: Option<i64>) -> Event {
    Event {
        kind: EventType::Put,
        kv: KeyValue {
            key: key.to_vec(),
            lease,
            ..KeyValue::default()
        },
        prev_kv: prev_lease.map(|lease| KeyValue {
            key: key.to_vec(),
            lease,
            ..KeyValue::default()
        }),
    }
}

#[test]
fn min_ttl_follows_etcds_formula() {
    // etcd defaults: 100 ms heartbeat, 10 ticks: 1.5 s rounds up to 2.
    assert_eq!(min_lease_ttl(10, 100), 2);
    assert_eq!(min_lease_ttl(10, 1000), 15);
    assert_eq!(min_lease_ttl(4, 500), 3);
}

#[test]
fn grant_rules() {
    let mut l = primary();
    assert_eq!(l.grant(0, 10, 0), Err(LeaseError::NotFound));
    assert_eq!(
        l.grant(1, MAX_LEASE_TTL + 1, 0),
        Err(LeaseError::TtlTooLarge)
    );
    assert_eq!(l.grant(1, MAX_LEASE_TTL, 0), Ok(MAX_LEASE_TTL));
    assert_eq!(l.grant(1, 10, 0), Err(LeaseError::Exists));
    // Below the minimum, zero and negative TTLs are raised to it.
    assert_eq!(l.grant(2, 1, 0), Ok(2));
    assert_eq!(l.grant(3, 0, 0), Ok(2));
    assert_eq!(l.grant(4, -5, 0), Ok(2));
    assert_eq!(l.leases(), vec![1, 2, 3, 4]);
    assert!(l.contains(2) && !l.contains(9));
    assert_eq!(
        qed_wire::Error::from(LeaseError::Exists),
        qed_wire::Error::LeaseExist
    );
    assert_eq!(
        qed_wire::Error::from(LeaseError::TtlTooLarge),
        qed_wire::Error::LeaseTtlTooLarge
    );
    assert_eq!(
        qed_wire::Error::from(LeaseError::NotFound),
        qed_wire::Error::LeaseNotFound
    );
}

#[test]
fn lease_ids_are_positive_and_non_zero() {
    assert_eq!(lease_id_from(0), 1);
    assert_eq!(lease_id_from(1 << 63), 1);
    assert_eq!(lease_id_from(u64::MAX), i64::MAX);
    assert_eq!(lease_id_from(42), 42);
}

#[test]
fn revoke_returns_sorted_keys_and_forgets_them() {
    let mut l = primary();
    l.grant(7, 10, 0).ok();
    for key in [b"c", b"a", b"b"] {
        assert_eq!(l.attach(7, key), Ok(()));
    }
    assert_eq!(l.lease_of(b"a"), Some(7));
    assert_eq!(
        l.revoke(7),
        Ok(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])
    );
    assert_eq!(l.lease_of(b"a"), None);
    assert_eq!(l.revoke(7), Err(LeaseError::NotFound));
    assert_eq!(l.next_deadline(), None);
    assert_eq!(l.attach(7, b"a"), Err(LeaseError::NotFound));
    assert_eq!(l.detach(7, b"a"), Err(LeaseError::NotFound));
}

#[test]
fn events_move_keys_between_leases() {
    let mut l = primary();
    l.grant(1, 10, 0).ok();
    l.grant(2, 10, 0).ok();
    l.apply_events(&[put_event(b"k", 1, None)]);
    assert_eq!(l.lease_of(b"k"), Some(1));
    // Put with another lease moves the key.
    l.apply_events(&[put_event(b"k", 2, Some(1))]);
    assert_eq!(l.lease_of(b"k"), Some(2));
    assert_eq!(l.revoke(1), Ok(vec![]));
    // Put without a lease detaches.
    l.apply_events(&[put_event(b"k", 0, Some(2))]);
    assert_eq!(l.lease_of(b"k"), None);
    l.apply_events(&[put_event(b"k", 2, None)]);
    // Delete detaches.
    let delete = Event {
        kind: EventType::Delete,
        kv: KeyValue {
            key: b"k".to_vec(),
            ..KeyValue::default()
        },
        prev_kv: Some(KeyValue {
            key: b"k".to_vec(),
            lease: 2,
            ..KeyValue::default()
        }),
    };
    l.apply_events(std::slice::from_ref(&delete));
    assert_eq!(l.lease_of(b"k"), None);
    assert_eq!(l.revoke(2), Ok(vec![]));
    // The deletes of a revoke name a lease already gone: ignored.
    l.apply_events(&[delete]);
}

#[test]
fn renew_and_time_to_live_on_the_leader() {
    let mut l = primary();
    l.grant(1, 10, 1_000).ok();
    let ttl = l.time_to_live(1, 4_500, true).ok();
    assert_eq!(ttl.as_ref().map(|t| (t.ttl, t.granted_ttl)), Some((6, 10)));
    assert_eq!(l.renew(1, 5_000), Ok(10));
    assert_eq!(
        l.time_to_live(1, 5_000, false).ok().map(|t| t.ttl),
        Some(10)
    );
    // Past its deadline: a keepalive cannot revive it.
    assert_eq!(l.renew(1, 15_000), Err(LeaseError::Expired));
    assert_eq!(
        l.time_to_live(1, 15_500, false).ok().map(|t| t.ttl),
        Some(0)
    );
    assert_eq!(
        l.time_to_live(1, 17_000, false).ok().map(|t| t.ttl),
        Some(-2)
    );
    assert_eq!(l.renew(9, 0), Err(LeaseError::NotFound));
    assert_eq!(
        l.time_to_live(9, 0, false).map(|t| t.ttl),
        Err(LeaseError::NotFound)
    );
}

#[test]
fn followers_neither_renew_nor_expire() {
    let mut l = Lessor::new(LeaseConfig::default());
    assert_eq!(l.grant(1, 5, 0), Ok(5));
    assert_eq!(l.renew(1, 0), Err(LeaseError::NotPrimary));
    assert_eq!(
        l.time_to_live(1, 0, false).map(|t| t.ttl),
        Err(LeaseError::NotPrimary)
    );
    assert!(l.expired(u64::MAX, 100).is_empty());
    assert_eq!(l.next_deadline(), None);
}

#[test]
fn expired_is_ordered_limited_and_retried() {
    let mut l = primary();
    l.grant(1, 10, 0).ok();
    l.grant(2, 5, 0).ok();
    l.grant(3, 20, 0).ok();
    assert!(l.expired(4_999, 10).is_empty());
    assert_eq!(l.next_deadline(), Some(5_000));
    assert_eq!(l.expired(10_000, 1), vec![2]);
    assert_eq!(l.expired(10_000, 10), vec![1]);
    // Not revoked yet: named again after the retry interval.
    assert!(l.expired(12_000, 10).is_empty());
    // Both were named at 10 s, so both are due again at 13 s.
    assert_eq!(l.expired(13_000, 10), vec![1, 2]);
    // A revoked lease is never named again; a renewed one not until due.
    l.revoke(2).ok();
    assert_eq!(l.renew(3, 13_000), Ok(20));
    assert_eq!(l.expired(16_000, 10), vec![1]);
    assert!(!l.expired(100_000, 10).contains(&2));
}

#[test]
fn promote_gives_full_ttl_plus_extension_and_demote_forgets() {
    let mut l = Lessor::new(LeaseConfig::default());
    l.grant(1, 10, 0).ok();
    l.promote(50_000, 1_000);
    assert_eq!(l.next_deadline(), Some(61_000));
    assert!(l.expired(60_999, 10).is_empty());
    assert_eq!(l.expired(61_000, 10), vec![1]);
    l.demote();
    assert!(!l.is_primary());
    assert_eq!(l.next_deadline(), None);
    assert!(l.expired(u64::MAX, 10).is_empty());
    // Promoted again later: a fresh full TTL, nothing left over.
    l.promote(100_000, 0);
    assert_eq!(
        l.time_to_live(1, 100_000, false).ok().map(|t| t.ttl),
        Some(10)
    );
}

#[test]
fn promote_spreads_a_pile_of_expiries() {
    let mut l = Lessor::new(LeaseConfig::default());
    let n = 3 * LEASE_REVOKE_RATE as i64;
    for id in 1..=n {
        l.grant(id, 10, 0).ok();
    }
    l.promote(0, 0);
    // Without spreading all 3000 would be due at 10 s; etcd's rule lets
    // about 750 through per second.
    let mut per_second = BTreeMap::new();
    let mut now = 0;
    let mut total = 0;
    while total < n as usize {
        now += 1000;
        let due = l.expired(now, usize::MAX);
        for id in &due {
            l.revoke(*id).ok();
        }
        total += due.len();
        per_second.insert(now, due.len());
        assert!(now < 100_000);
    }
    assert!(per_second.values().all(|&c| c <= 1000), "{per_second:?}");
    assert!(now >= 13_000, "spread over several seconds: {per_second:?}");
}

#[test]
fn snapshot_round_trips_the_replicated_state_only() {
    let mut l = primary();
    l.grant(1, 10, 0).ok();
    l.grant(2, 60, 0).ok();
    l.attach(1, b"a").ok();
    l.attach(2, b"b").ok();
    l.attach(2, b"c").ok();
    let snap = l.snapshot();
    let bytes = postcard::to_stdvec(&snap).unwrap_or_default();
    let decoded: LeaseSnapshot = postcard::from_bytes(&bytes).unwrap_or_default();
    assert_eq!(decoded, snap);
    let mut r = Lessor::from_snapshot(LeaseConfig::default(), decoded);
    assert!(!r.is_primary());
    assert_eq!(r.leases(), vec![1, 2]);
    assert_eq!(r.lease_of(b"c"), Some(2));
    assert_eq!(r.granted_ttl(2), Some(60));
    assert_eq!(r.next_deadline(), None);
    r.promote(5_000, 0);
    assert_eq!(r.next_deadline(), Some(15_000));
    assert_eq!(r.snapshot(), snap);
}

/// What a restore (or a grant) keeps is the same on every member: a TTL
/// below the constant [`MIN_APPLIED_TTL`] is raised to it, never to this
/// member's own (flag-derived) minimum, which only raises the grants it
/// proposes.
#[test]
fn restore_and_grant_ignore_this_members_minimum() {
    let snap = LeaseSnapshot {
        leases: vec![
            LeaseRecord {
                id: 3,
                ttl: 1,
                keys: vec![b"k".to_vec()],
            },
            LeaseRecord {
                id: 4,
                ttl: 3,
                keys: vec![],
            },
        ],
    };
    let config = LeaseConfig {
        min_ttl: 5,
        ..LeaseConfig::default()
    };
    let mut l = Lessor::from_snapshot(config.clone(), snap);
    assert_eq!(l.granted_ttl(3), Some(MIN_APPLIED_TTL));
    assert_eq!(l.granted_ttl(4), Some(3));
    assert_eq!(l.grant(5, 1, 0), Ok(MIN_APPLIED_TTL));
    assert_eq!(grant_ttl(&config, 1), 5);
    assert_eq!(grant_ttl(&config, 60), 60);
}

/// The driver's apply path end to end, as the module docs prescribe: a
/// put attaches through its event, a revoke's keys go in one txn, and a
/// watcher sees them deleted in one response.
#[test]
fn revoke_deletes_keys_in_one_revision_seen_by_a_watcher() {
    use crate::mvcc::Store;
    use crate::watch::{WatchConfig, WatchCreateRequest, WatchHub};
    use qed_wire::kv::{DeleteRangeRequest, PutRequest, RequestOp, TxnRequest};

    let mut store = Store::new();
    let mut hub = WatchHub::new(WatchConfig::default(), store.revision());
    let mut lessor = primary();
    let watch = WatchCreateRequest {
        key: b"k".to_vec(),
        range_end: b"l".to_vec(),
        ..WatchCreateRequest::default()
    };
    assert_eq!(hub.create(1, &watch), Ok(0));
    assert_eq!(lessor.grant(9, 10, 0), Ok(10));
    for key in [b"k1", b"k2"] {
        let req = PutRequest {
            key: key.to_vec(),
            value: b"v".to_vec(),
            lease: 9,
            ..PutRequest::default()
        };
        let Ok((_, events)) = store.put(&req, &|id| lessor.contains(id)) else {
            panic!("put refused");
        };
        lessor.apply_events(&events);
        hub.on_apply(&events, store.revision());
    }
    assert_eq!(lessor.lease_of(b"k2"), Some(9));

    assert_eq!(lessor.expired(10_000, 500), vec![9]);
    let Ok(keys) = lessor.revoke(9) else {
        panic!("revoke refused");
    };
    let txn = TxnRequest {
        success: keys
            .into_iter()
            .map(|key| {
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key,
                    ..DeleteRangeRequest::default()
                })
            })
            .collect(),
        ..TxnRequest::default()
    };
    let Ok((_, events)) = store.txn(&txn, &|id| lessor.contains(id)) else {
        panic!("delete txn refused");
    };
    lessor.apply_events(&events);
    hub.on_apply(&events, store.revision());

    // Undrained responses of one watch join: the revoke's revision is the
    // last two events.
    let out = hub.take_responses(1);
    let events: Vec<_> = out.iter().flat_map(|r| r.events.clone()).collect();
    let last = &events[events.len().saturating_sub(2)..];
    assert_eq!(events.len(), 4);
    assert!(last
        .iter()
        .all(|e| e.kind == EventType::Delete && e.kv.mod_revision == 4));
    assert!(lessor.leases().is_empty());
}
