//! Export then import gives back the same store and leases; the layout
//! details etcd depends on; damaged files are refused without panics.

use super::*;
use qed_wire::kv::{DeleteRangeRequest, PutRequest, RangeRequest};

fn auth_sample() -> AuthSnapshot {
    AuthSnapshot {
        enabled: true,
        revision: 7,
        users: vec![
            User {
                name: "alice".into(),
                password_hash: Some("$2a$10$abcdefghijklmnopqrstuv".into()),
                roles: vec!["readers".into(), "root".into()],
            },
            User {
                name: "cert-only".into(),
                password_hash: None,
                roles: Vec::new(),
            },
        ],
        roles: vec![
            Role {
                name: "readers".into(),
                perms: vec![
                    Permission {
                        perm_type: PermissionType::Read,
                        key: b"a".to_vec(),
                        range_end: b"b".to_vec(),
                    },
                    Permission {
                        perm_type: PermissionType::ReadWrite,
                        key: b"k".to_vec(),
                        range_end: Vec::new(),
                    },
                ],
            },
            Role {
                name: "root".into(),
                perms: Vec::new(),
            },
        ],
    }
}

fn put(s: &mut Store, k: &str, v: &str, lease: i64) {
    let req = PutRequest {
        key: k.as_bytes().to_vec(),
        value: v.as_bytes().to_vec(),
        lease,
        ..Default::default()
    };
    s.put(&req, &|_| true).unwrap();
}

fn delete(s: &mut Store, k: &str) {
    let req = DeleteRangeRequest {
        key: k.as_bytes().to_vec(),
        ..Default::default()
    };
    s.delete_range(&req).unwrap();
}

fn sample() -> (Store, LeaseSnapshot) {
    let mut s = Store::new();
    for i in 0..300 {
        put(&mut s, &format!("k{:03}", i % 120), &format!("v{i}"), 0);
    }
    delete(&mut s, "k005");
    delete(&mut s, "k006");
    put(&mut s, "k006", "again", 0);
    s.compact(200).unwrap();
    put(&mut s, "leased", "x", 7);
    put(&mut s, "big", &"b".repeat(20_000), 0);
    delete(&mut s, "k007");
    let leases = LeaseSnapshot {
        leases: vec![
            LeaseRecord {
                id: 7,
                ttl: 60,
                keys: vec![b"leased".to_vec()],
            },
            LeaseRecord {
                id: 9,
                ttl: 30,
                keys: Vec::new(),
            },
        ],
    };
    (s, leases)
}

fn store_of(imported: &Imported<'_>) -> Store {
    imported.histories.clone().into_store()
}

fn all_history(s: &Store) -> Vec<(Vec<u8>, Vec<Change>)> {
    s.histories()
        .map(|(k, c)| (k.to_vec(), c.iter().map(ChangeRef::to_change).collect()))
        .collect()
}

#[test]
fn export_import_round_trip() {
    let (store, leases) = sample();
    let bytes = export(&store, &leases, &auth_sample(), 42).unwrap();
    assert!(looks_like_bbolt(&bytes));
    let imported = import(&bytes).unwrap();
    assert_eq!(all_history(&store_of(&imported)), all_history(&store));
    assert_eq!(store_of(&imported).revision(), store.revision());
    assert_eq!(store_of(&imported).compact_revision(), 200);
    assert_eq!(imported.leases, leases);
    assert_eq!(imported.consistent_index, 42);
    assert_eq!(imported.auth, auth_sample());
    let live = store
        .range(&RangeRequest {
            key: vec![0],
            range_end: vec![0],
            count_only: true,
            ..Default::default()
        })
        .unwrap()
        .count as usize;
    assert_eq!(imported.counts.keys, live);
    assert_eq!(
        imported.counts.revisions,
        all_history(&store)
            .iter()
            .map(|(_, c)| c.len())
            .sum::<usize>()
    );
    assert_eq!(imported.counts.leases, 2);
    assert_eq!((imported.counts.users, imported.counts.roles), (2, 2));

    // A restore encodes the image straight from the import: the same
    // bytes as the state machine built from it writes.
    use crate::server::state_machine::{Limits, SnapshotImage, StateMachine};
    let no_urls = Default::default();
    let direct = SnapshotImage::new(
        1,
        &imported.histories,
        &[],
        leases.clone(),
        auth_sample(),
        &no_urls,
    )
    .unwrap()
    .to_vec()
    .unwrap();
    let limits = Limits {
        lease: crate::lease::LeaseConfig::default(),
    };
    let state = StateMachine::from_parts(
        store_of(&imported),
        imported.leases.clone(),
        imported.auth.clone(),
        1,
        limits,
        Default::default(),
    );
    assert_eq!(direct, state.to_snapshot().unwrap());
    // With the sha256 trailer too; a wrong trailer is refused.
    let mut sealed = crate::server::snapshot_file::seal(bytes.clone());
    assert_eq!(
        all_history(&store_of(&import(&sealed).unwrap())),
        all_history(&store)
    );
    let last = sealed.len() - 1;
    sealed[last] ^= 1;
    assert_eq!(import(&sealed).unwrap_err(), ImportError::Checksum);
}

#[test]
fn layout_matches_etcd() {
    let (store, leases) = sample();
    let bytes = export(&store, &leases, &auth_sample(), 1).unwrap();
    let db = Db::open(&bytes).unwrap();
    let mut names = Vec::new();
    db.for_each(db.root(), &mut |k, _| {
        names.push(String::from_utf8_lossy(k).into_owned());
        Ok(())
    })
    .unwrap();
    assert_eq!(
        names,
        [
            "alarm",
            "auth",
            "authRoles",
            "authUsers",
            "cluster",
            "key",
            "lease",
            "members",
            "members_removed",
            "meta"
        ]
    );
    let mut keys = Vec::new();
    each_value(&db, KEY, |k, v| {
        keys.push((k.to_vec(), v.to_vec()));
        Ok(())
    })
    .unwrap();
    // The delete of k007 is last: 18 bytes ending in 't', value only the key.
    let (k, v) = keys.last().unwrap();
    assert_eq!(k.len(), 18);
    assert_eq!(k[17], b't');
    assert_eq!(k[8], b'_');
    assert_eq!(v, &[0x0a, 4, b'k', b'0', b'0', b'7']);
    assert!(keys.windows(2).all(|p| p[0].0 < p[1].0));
}

#[test]
fn unfinished_compaction_is_finished_on_import() {
    // A backend saved between scheduling and finishing a compaction still
    // holds the old revisions.
    let mut s = Store::new();
    for i in 0..10 {
        put(&mut s, "a", &format!("{i}"), 0);
    }
    delete(&mut s, "a");
    put(&mut s, "b", "1", 0);
    let mut bytes_store = s.clone();
    bytes_store.compact(12).unwrap();
    let bytes = export(&s, &LeaseSnapshot::default(), &AuthSnapshot::default(), 1).unwrap();
    // Rewrite meta by hand: scheduled 12, not finished.
    let rewritten = {
        let mut db = DbWriter::default();
        let src = Db::open(&bytes).unwrap();
        let mut k = db.bucket(KEY).unwrap();
        each_value(&src, KEY, |key, v| {
            k.put(key, v).unwrap();
            Ok(())
        })
        .unwrap();
        k.finish().unwrap();
        let mut m = db.bucket(META).unwrap();
        m.put(
            SCHEDULED_COMPACT,
            &revision_key(Revision::new(12, 0), false),
        )
        .unwrap();
        m.finish().unwrap();
        db.finish().unwrap()
    };
    let imported = import(&rewritten).unwrap();
    assert_eq!(all_history(&store_of(&imported)), all_history(&bytes_store));
    assert_eq!(store_of(&imported).compact_revision(), 12);
}

#[test]
fn damaged_exports_are_refused_without_panics() {
    let (store, leases) = sample();
    let good = export(&store, &leases, &auth_sample(), 1).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..2000 {
        let mut bytes = good.clone();
        for _ in 0..1 + next() % 6 {
            let at = (next() % bytes.len() as u64) as usize;
            bytes[at] = next() as u8;
        }
        if round % 2 == 0 {
            for meta in 0..2 {
                let m = meta * bbolt::DEFAULT_PAGE_SIZE + bbolt::PAGE_HEADER;
                let sum = bbolt::fnv64a(&bytes[m..m + bbolt::META_SUMMED]);
                bytes[m + bbolt::META_SUMMED..m + bbolt::META_LEN]
                    .copy_from_slice(&sum.to_le_bytes());
            }
        }
        if let Err(e) = import(&bytes) {
            let text = e.to_string();
            assert!(
                text.starts_with("bbolt page ")
                    || text.starts_with("not a bbolt database: ")
                    || text.starts_with("not an etcd backend: "),
                "{text}"
            );
        }
    }
    assert!(matches!(
        import(b"not a database"),
        Err(ImportError::Bbolt(_))
    ));
}

/// etcd 3.5's backend: no synced freelist (the meta names page
/// 0xffff_ffff_ffff_ffff), `term` and `confState` in `meta`, leases with
/// `RemainingTTL`, and no sha256 trailer (a copy of `member/snap/db`).
#[test]
fn etcd_35_shaped_backend_imports() {
    let mut db = DbWriter::default();
    let mut kv = Vec::new();
    proto::encode_key_value(&mut kv, b"a", 2, 2, 1, b"one", 5);
    let mut k = db.bucket(KEY).unwrap();
    k.put(&revision_key(Revision::new(2, 0), false), &kv)
        .unwrap();
    k.finish().unwrap();
    let mut lease = Vec::new();
    proto::Lease { id: 5, ttl: 100 }.encode(&mut lease);
    lease.extend_from_slice(&[0x18, 42]); // RemainingTTL = 42
    let mut l = db.bucket(LEASE).unwrap();
    l.put(&5u64.to_be_bytes(), &lease).unwrap();
    l.finish().unwrap();
    let mut m = db.bucket(META).unwrap();
    m.put(b"confState", br#"{"voters":[1]}"#).unwrap();
    m.put(CONSISTENT_INDEX, &9u64.to_be_bytes()).unwrap();
    m.put(b"term", &2u64.to_be_bytes()).unwrap();
    m.finish().unwrap();
    let mut bytes = db.finish().unwrap();
    for meta in 0..2 {
        let m = meta * bbolt::DEFAULT_PAGE_SIZE + bbolt::PAGE_HEADER;
        bytes[m + 32..m + 40].copy_from_slice(&u64::MAX.to_le_bytes());
        let sum = bbolt::fnv64a(&bytes[m..m + bbolt::META_SUMMED]);
        bytes[m + bbolt::META_SUMMED..m + bbolt::META_LEN].copy_from_slice(&sum.to_le_bytes());
    }
    let imported = import(&bytes).unwrap();
    assert_eq!(store_of(&imported).revision(), 2);
    assert_eq!(store_of(&imported).compact_revision(), 0); // never compacted
    assert_eq!(imported.consistent_index, 9);
    assert_eq!(
        imported.leases.leases,
        vec![LeaseRecord {
            id: 5,
            ttl: 100,
            keys: vec![b"a".to_vec()]
        }]
    );
}

/// qed accepts user and role names etcd's backend cannot hold (bbolt keys
/// are at most 32 KiB); a snapshot leaves them out instead of failing.
#[test]
fn overlong_auth_names_are_left_out() {
    let mut auth = auth_sample();
    let long = "u".repeat(bbolt::MAX_KEY_SIZE + 1);
    auth.users.push(User {
        name: long.clone(),
        password_hash: None,
        roles: Vec::new(),
    });
    assert_eq!(unexportable_auth_names(&auth), [long.as_str()]);
    let bytes = export(&Store::new(), &LeaseSnapshot::default(), &auth, 1).unwrap();
    assert_eq!(import(&bytes).unwrap().auth, auth_sample());
}

#[test]
fn the_two_thread_sort_is_stable() {
    // Keys repeat across both halves; each key's items must keep their
    // input order (a key's changes arrive in revision order).
    let keys: [&[u8]; 3] = [b"b", b"a", b"c"];
    let items: Vec<(&[u8], usize)> = (0..101).map(|i| (keys[i % 3], i)).collect();
    let sorted = sort_by_key_on_two_threads(items.clone());
    let mut want = items;
    want.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(sorted, want);
    assert!(sort_by_key_on_two_threads(Vec::<(&[u8], u8)>::new()).is_empty());
}
